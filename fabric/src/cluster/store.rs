//! The Raft log, vote and snapshots on a [`Storage`], and the state machine.
//!
//! Files (all checksummed records, see [`records`](super::records)):
//! - `log.{first index}`: segments of log entries, one record each; a
//!   segment is closed at [`SEGMENT_BYTES`] and deleted once every entry in
//!   it is purged (covered by a snapshot).
//! - `vote.N`, `committed.N`, `purged.N`: registers (last valid record wins).
//! - `snap.{last index}`: the newest snapshot: a meta record and a data record.
//!
//! On open, a torn or corrupt record ends its file: it and everything after
//! it (later records, later segments) are cut off and reported, never
//! applied. Only unsynced bytes can be torn, and an entry is acknowledged to
//! the leader only after its sync, so a torn tail never held a vote that counted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::{self, Cursor};
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use tokio::sync::watch;

use super::records::{self, Register};
use super::state::{Desired, Objects, Reply};
use super::{NodeAddr, NodeId, TypeConfig};
use crate::platform::Storage;
use crate::rt;

/// Size at which a log segment is closed and a new one started.
pub const SEGMENT_BYTES: u64 = 1024 * 1024;

type SErr = StorageError<NodeId>;

fn read_err(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::read(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::write(AnyError::new(&e)).into()
}

fn seg_name(first: u64) -> String {
    format!("log.{first:020}")
}

#[derive(Debug)]
struct LogInner {
    storage: Arc<dyn Storage>,
    vote_reg: Register,
    vote: Option<Vote<NodeId>>,
    committed_reg: Register,
    committed: Option<LogId<NodeId>>,
    purged_reg: Register,
    last_purged: Option<LogId<NodeId>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    /// index -> (segment first index, byte offset in the segment)
    pos: BTreeMap<u64, (u64, u64)>,
    /// segment first index -> length in bytes
    segments: BTreeMap<u64, u64>,
}

/// The Raft log and vote. Clones share the same log (a clone is the reader).
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    /// Open the log on `storage`. Returns it with a description of every
    /// damaged record that was cut off.
    pub fn open(storage: Arc<dyn Storage>) -> io::Result<(LogStore, Vec<String>)> {
        let (vote_reg, vote, mut damage) = Register::open(storage.clone(), "vote")?;
        let (committed_reg, committed, d) = Register::open(storage.clone(), "committed")?;
        damage.extend(d);
        let (purged_reg, last_purged, d) =
            Register::open::<Option<LogId<NodeId>>>(storage.clone(), "purged")?;
        damage.extend(d);
        let last_purged = last_purged.flatten();
        let mut inner = LogInner {
            storage: storage.clone(),
            vote_reg,
            vote,
            committed_reg,
            committed: committed.flatten(),
            purged_reg,
            last_purged,
            entries: BTreeMap::new(),
            pos: BTreeMap::new(),
            segments: BTreeMap::new(),
        };
        let mut segs: Vec<(u64, String)> = storage
            .list()?
            .into_iter()
            .filter_map(|f| Some((f.strip_prefix("log.")?.parse().ok()?, f)))
            .collect();
        segs.sort();
        let purged_index = last_purged.map(|l| l.index);
        let mut broken = false;
        for (first, file) in segs {
            if broken {
                damage.push(format!("{file}: removed, it follows a damaged segment"));
                storage.remove(&file)?;
                continue;
            }
            let (recs, d) = records::load(&*storage, &file)?;
            damage.extend(d.clone());
            broken = d.is_some();
            let mut len = 0;
            for (off, payload) in recs {
                let entry: Option<Entry<TypeConfig>> = serde_json::from_slice(&payload).ok();
                let idx = entry.as_ref().map(|e| e.log_id.index);
                let expected = inner
                    .entries
                    .keys()
                    .next_back()
                    .copied()
                    .or(purged_index)
                    .map(|i| i + 1);
                let fits = match (idx, expected) {
                    (Some(i), _) if purged_index.is_some_and(|p| i <= p) => {
                        len = off + (8 + payload.len()) as u64;
                        continue;
                    }
                    (Some(i), Some(want)) => i == want,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if !fits {
                    damage.push(format!(
                        "{file}: entry at byte {off} is unreadable or out of order; cut from there"
                    ));
                    storage.truncate(&file, off)?;
                    broken = true;
                    break;
                }
                let entry = entry.expect("checked above");
                inner.pos.insert(entry.log_id.index, (first, off));
                inner.entries.insert(entry.log_id.index, entry);
                len = off + (8 + payload.len()) as u64;
            }
            inner.segments.insert(first, len);
        }
        Ok((
            LogStore {
                inner: Arc::new(Mutex::new(inner)),
            },
            damage,
        ))
    }

    /// A slow disk's sync time ([`Storage::sync_delay`]), waited on the
    /// runtime's clock before a synced write (zero on real disks, where
    /// the sync call itself takes the time). The guard is not held across it.
    async fn wait_for_disk(&self) {
        let delay = self.lock().storage.sync_delay();
        if !delay.is_zero() {
            rt::sleep(delay).await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of entries held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the log holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl LogInner {
    fn append_one(
        &mut self,
        entry: Entry<TypeConfig>,
        touched: &mut BTreeSet<u64>,
    ) -> io::Result<()> {
        let payload = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        let rec = records::encode(&payload);
        let index = entry.log_id.index;
        let seg = match self.segments.iter().next_back() {
            Some((&first, &len)) if len < SEGMENT_BYTES => first,
            _ => {
                self.segments.insert(index, 0);
                index
            }
        };
        let len = self.segments.get_mut(&seg).expect("segment exists");
        self.storage.append(&seg_name(seg), &rec)?;
        self.pos.insert(index, (seg, *len));
        *len += rec.len() as u64;
        self.entries.insert(index, entry);
        touched.insert(seg);
        Ok(())
    }

    /// Append entries and sync every segment touched.
    fn append_synced(
        &mut self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> io::Result<()> {
        let mut touched = BTreeSet::new();
        for e in entries {
            self.append_one(e, &mut touched)?;
        }
        for s in touched {
            self.storage.sync(&seg_name(s))?;
        }
        Ok(())
    }

    fn truncate_from(&mut self, index: u64) -> io::Result<()> {
        let Some(&(seg, off)) = self.pos.get(&index) else {
            return Ok(());
        };
        let later: Vec<u64> = self.segments.range(seg + 1..).map(|(f, _)| *f).collect();
        for f in later {
            self.storage.remove(&seg_name(f))?;
            self.segments.remove(&f);
        }
        if off == 0 {
            self.storage.remove(&seg_name(seg))?;
            self.segments.remove(&seg);
        } else {
            self.storage.truncate(&seg_name(seg), off)?;
            self.segments.insert(seg, off);
        }
        self.entries.split_off(&index);
        self.pos.split_off(&index);
        Ok(())
    }

    fn purge_upto(&mut self, log_id: LogId<NodeId>) -> io::Result<()> {
        self.purged_reg.store(&Some(log_id), true)?;
        self.last_purged = Some(log_id);
        self.entries = self.entries.split_off(&(log_id.index + 1));
        self.pos = self.pos.split_off(&(log_id.index + 1));
        let live: BTreeSet<u64> = self.pos.values().map(|(s, _)| *s).collect();
        let dead: Vec<u64> = self
            .segments
            .keys()
            .filter(|s| !live.contains(s))
            .copied()
            .collect();
        for s in dead {
            self.storage.remove(&seg_name(s))?;
            self.segments.remove(&s);
        }
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let g = self.lock();
        let last = g
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(g.last_purged);
        Ok(LogState {
            last_purged_log_id: g.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        self.wait_for_disk().await;
        let mut g = self.lock();
        g.vote_reg
            .store(vote, true)
            .map_err(|e| SErr::from(StorageIOError::write_vote(AnyError::new(&e))))?;
        g.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        let mut g = self.lock();
        // Not synced: after a crash openraft only re-applies less on startup.
        g.committed_reg
            .store(&committed, false)
            .map_err(write_err)?;
        g.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.wait_for_disk().await;
        let result = self.lock().append_synced(entries);
        let failed = result
            .as_ref()
            .err()
            .map(|e| write_err(io::Error::new(e.kind(), e.to_string())));
        callback.log_io_completed(result);
        failed.map_or(Ok(()), Err)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        self.lock().truncate_from(log_id.index).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        self.lock().purge_upto(log_id).map_err(write_err)
    }
}

/// A snapshot kept in memory: its meta and serialized [`Objects`].
#[derive(Debug, Clone)]
struct Snap {
    meta: SnapshotMeta<NodeId, NodeAddr>,
    data: Vec<u8>,
}

#[derive(Debug)]
struct SmInner {
    storage: Arc<dyn Storage>,
    data: Objects,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, NodeAddr>,
    snapshot: Option<Snap>,
    desired: watch::Sender<Arc<Desired>>,
}

/// The state machine: the desired state as [`Objects`]. Clones share it.
#[derive(Debug, Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<SmInner>>,
}

fn snap_name(meta: &SnapshotMeta<NodeId, NodeAddr>) -> String {
    format!("snap.{:020}", meta.last_log_id.map_or(0, |l| l.index))
}

impl StateMachine {
    /// Open the state machine on `storage`, starting from the newest valid
    /// snapshot. Returns it and the damage found.
    pub fn open(storage: Arc<dyn Storage>) -> io::Result<(StateMachine, Vec<String>)> {
        let mut snaps: Vec<String> = storage
            .list()?
            .into_iter()
            .filter(|f| f.starts_with("snap."))
            .collect();
        snaps.sort();
        let mut damage = Vec::new();
        let mut found: Option<(Snap, Objects)> = None;
        for file in snaps.iter().rev() {
            let (recs, d) = records::load(&*storage, file)?;
            damage.extend(d);
            let parsed = match &recs[..] {
                [(_, meta), (_, data)] => serde_json::from_slice(meta)
                    .ok()
                    .zip(serde_json::from_slice::<Objects>(data).ok())
                    .map(|(meta, objects)| {
                        let snap = Snap {
                            meta,
                            data: data.clone(),
                        };
                        (snap, objects)
                    }),
                _ => None,
            };
            match parsed {
                Some(p) if found.is_none() => found = Some(p),
                Some(_) => {}
                None => damage.push(format!("{file}: incomplete snapshot, ignored")),
            }
        }
        let (snapshot, data, last_applied, membership) = match found {
            Some((snap, objects)) => {
                let last = snap.meta.last_log_id;
                let m = snap.meta.last_membership.clone();
                (Some(snap), objects, last, m)
            }
            None => (None, Objects::default(), None, StoredMembership::default()),
        };
        let keep = snapshot.as_ref().map(|s| snap_name(&s.meta));
        for file in snaps {
            if Some(&file) != keep.as_ref() {
                storage.remove(&file)?;
            }
        }
        let (desired, _) = watch::channel(Arc::new(desired_of(&data)));
        let inner = SmInner {
            storage,
            data,
            last_applied,
            membership,
            snapshot,
            desired,
        };
        Ok((
            StateMachine {
                inner: Arc::new(Mutex::new(inner)),
            },
            damage,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, SmInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follow the desired state as it is applied.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Desired>> {
        self.lock().desired.subscribe()
    }

    /// Look at the applied objects without copying them.
    pub fn peek<R>(&self, f: impl FnOnce(&Objects) -> R) -> R {
        f(&self.lock().data)
    }

    /// A copy of the objects as applied so far, and the last applied log index.
    pub fn objects(&self) -> (Objects, u64) {
        let g = self.lock();
        (g.data.clone(), g.last_applied.map_or(0, |l| l.index))
    }
}

fn desired_of(data: &Objects) -> Desired {
    Desired {
        version: data.version,
        config: if data.objects.is_empty() {
            None
        } else {
            // Every applied change validated, so this only fails on a bug.
            data.config().ok().map(Arc::new)
        },
        placement: Arc::new(data.placement.clone()),
        placement_version: data.placement_version,
        draining: Arc::new(data.draining.clone()),
    }
}

impl SmInner {
    fn publish(&self) {
        let published = self.desired.borrow().clone();
        if published.version != self.data.version
            || published.placement_version != self.data.placement_version
            || self.data.version == 0
        {
            let d = Arc::new(desired_of(&self.data));
            self.desired.send_if_modified(|cur| {
                if **cur == *d {
                    false
                } else {
                    *cur = d;
                    true
                }
            });
        }
    }

    fn save_snapshot(&mut self, snap: Snap) -> io::Result<()> {
        let file = snap_name(&snap.meta);
        // A snapshot at the same index holds the same state (the state
        // machine is deterministic): keep a valid one rather than rewrite it,
        // so a crash mid-write never leaves the purged log uncovered.
        let existing = self.storage.read(&file).unwrap_or_default();
        let valid = records::decode(&existing);
        if valid.records.len() != 2 || valid.damage.is_some() {
            let meta = serde_json::to_vec(&snap.meta).map_err(io::Error::other)?;
            self.storage.remove(&file)?;
            self.storage.append(&file, &records::encode(&meta))?;
            self.storage.append(&file, &records::encode(&snap.data))?;
            self.storage.sync(&file)?;
        }
        for f in self.storage.list()? {
            if f.starts_with("snap.") && f != file {
                self.storage.remove(&f)?;
            }
        }
        self.snapshot = Some(snap);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let mut g = self.lock();
        let data = serde_json::to_vec(&g.data).map_err(write_err)?;
        let last = g.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: g.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                last.map_or(0, |l| l.leader_id.term),
                last.map_or(0, |l| l.index)
            ),
        };
        let snap = Snap { meta, data };
        g.save_snapshot(snap.clone()).map_err(write_err)?;
        Ok(Snapshot {
            meta: snap.meta,
            snapshot: Box::new(Cursor::new(snap.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeAddr>), SErr> {
        let g = self.lock();
        Ok((g.last_applied, g.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut g = self.lock();
        let mut replies = Vec::new();
        for e in entries {
            g.last_applied = Some(e.log_id);
            let reply = match &e.payload {
                EntryPayload::Blank => Reply::None,
                EntryPayload::Normal(cmd) => g.data.apply_in_term(
                    e.log_id.leader_id.term,
                    e.log_id.leader_id.node_id,
                    e.log_id.index,
                    cmd,
                ),
                EntryPayload::Membership(m) => {
                    g.membership = StoredMembership::new(Some(e.log_id), m.clone());
                    Reply::None
                }
            };
            replies.push(reply);
        }
        g.publish();
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeAddr>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let bytes = snapshot.into_inner();
        let data: Objects = serde_json::from_slice(&bytes).map_err(read_err)?;
        let mut g = self.lock();
        g.save_snapshot(Snap {
            meta: meta.clone(),
            data: bytes,
        })
        .map_err(write_err)?;
        g.data = data;
        g.last_applied = meta.last_log_id;
        g.membership = meta.last_membership.clone();
        g.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        Ok(self.lock().snapshot.clone().map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::state::Command;
    use crate::platform::MemStorage;
    use openraft::CommittedLeaderId;

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Delete {
                kind: "pools".into(),
                name: format!("p{index}"),
                if_version: None,
                tenant: None,
            }),
        }
    }

    fn indexes(log: &LogStore) -> Vec<u64> {
        log.lock().entries.keys().copied().collect()
    }

    #[test]
    fn log_survives_reopen_truncate_purge_and_segments() {
        let disk = MemStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(disk.clone());
        let (log, damage) = LogStore::open(storage.clone()).unwrap();
        assert!(damage.is_empty() && log.is_empty());
        // Enough entries for several segments.
        let n = 12_000;
        log.lock().append_synced((1..=n).map(entry)).unwrap();
        let segs = storage
            .list()
            .unwrap()
            .iter()
            .filter(|f| f.starts_with("log."))
            .count();
        assert!(segs >= 2, "{segs} segments");
        let (log, damage) = LogStore::open(storage.clone()).unwrap();
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(indexes(&log), (1..=n).collect::<Vec<_>>());

        // Truncate into the middle of the first segment: later segments go.
        log.lock().truncate_from(100).unwrap();
        log.lock().append_synced((100..=150).map(entry)).unwrap();
        let (log, damage) = LogStore::open(storage.clone()).unwrap();
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(indexes(&log), (1..=150).collect::<Vec<_>>());

        // Purge: entries up to 120 go; files holding only purged ones are removed.
        log.lock()
            .purge_upto(LogId::new(CommittedLeaderId::new(1, 1), 120))
            .unwrap();
        let (log, _) = LogStore::open(storage.clone()).unwrap();
        assert_eq!(indexes(&log), (121..=150).collect::<Vec<_>>());
        // Purge past the end (a snapshot from the leader): the log empties,
        // appends continue after it.
        log.lock()
            .purge_upto(LogId::new(CommittedLeaderId::new(1, 1), 500))
            .unwrap();
        assert!(storage
            .list()
            .unwrap()
            .iter()
            .all(|f| !f.starts_with("log.")));
        log.lock().append_synced((501..=510).map(entry)).unwrap();
        let (log, damage) = LogStore::open(storage).unwrap();
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(indexes(&log), (501..=510).collect::<Vec<_>>());
    }

    #[test]
    fn torn_and_corrupt_tails_are_cut_never_applied() {
        let disk = MemStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(disk.clone());
        let (log, _) = LogStore::open(storage.clone()).unwrap();
        log.lock().append_synced((1..=10).map(entry)).unwrap();
        // Unsynced appends, then power loss tearing the tail mid-record.
        {
            let mut g = log.lock();
            let mut touched = BTreeSet::new();
            for i in 11..=13 {
                g.append_one(entry(i), &mut touched).unwrap();
            }
        }
        disk.crash(|_, tail| tail - 3);
        let (log, damage) = LogStore::open(storage.clone()).unwrap();
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert_eq!(indexes(&log), (1..=12).collect::<Vec<_>>());
        // The cut is durable: reopening finds no damage and the same log.
        let (log, damage) = LogStore::open(storage.clone()).unwrap();
        assert!(damage.is_empty());
        assert_eq!(log.len(), 12);

        // A flipped byte in the middle of the file: cut from that record on.
        let file = storage
            .list()
            .unwrap()
            .into_iter()
            .find(|f| f.starts_with("log."))
            .unwrap();
        let mut bytes = storage.read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        storage.remove(&file).unwrap();
        storage.append(&file, &bytes).unwrap();
        storage.sync(&file).unwrap();
        let (log, damage) = LogStore::open(storage).unwrap();
        assert_eq!(damage.len(), 1, "{damage:?}");
        let kept = indexes(&log);
        assert!(!kept.is_empty() && kept.len() < 12);
        assert_eq!(kept, (1..=kept.len() as u64).collect::<Vec<_>>());
    }
}
