//! Checksummed records on append-only [`Storage`] files.
//!
//! A record is `len: u32 LE | crc32(len bytes ++ payload): u32 LE | payload`.
//! Reading stops at the first record that is short (a torn tail) or whose
//! checksum fails (corruption): everything from there on is reported as
//! damage, so a caller truncates it instead of applying it.
//!
//! A [`Register`] keeps one value (the Raft vote, the purge point) as the
//! last valid record of a file, rotating to a fresh file when it grows.

use std::io;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::platform::Storage;

/// Largest record payload accepted (a snapshot is one record).
pub const MAX_RECORD: usize = 64 * 1024 * 1024;
const HEADER: usize = 8;

fn crc(len: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(payload);
    h.finalize()
}

/// One record, framed and checksummed.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc(&len, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// What [`decode`] found in a file.
#[derive(Debug, Default)]
pub struct Decoded<'a> {
    /// Valid records: (byte offset, payload).
    pub records: Vec<(u64, &'a [u8])>,
    /// Length of the valid prefix; a caller truncates the file to it.
    pub valid_len: u64,
    /// Why reading stopped before the end, if it did.
    pub damage: Option<String>,
}

/// Split `bytes` into valid records, stopping at the first bad one.
pub fn decode(bytes: &[u8]) -> Decoded<'_> {
    let mut out = Decoded::default();
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < HEADER {
            out.damage = Some(format!("torn record header at byte {at}"));
            break;
        }
        let len_bytes = &rest[..4];
        let len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
        let sum = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            out.damage = Some(format!("record length {len} at byte {at} is too large"));
            break;
        }
        if rest.len() < HEADER + len {
            out.damage = Some(format!("torn record at byte {at}"));
            break;
        }
        let payload = &rest[HEADER..HEADER + len];
        if crc(len_bytes, payload) != sum {
            out.damage = Some(format!("checksum mismatch at byte {at}"));
            break;
        }
        out.records.push((at as u64, payload));
        at += HEADER + len;
    }
    out.valid_len = at as u64;
    out
}

/// Valid records of a file: (byte offset, payload).
pub type Records = Vec<(u64, Vec<u8>)>;

/// Read `file` and cut off any damaged tail; returns the valid records and
/// the damage found, if any.
pub fn load(storage: &dyn Storage, file: &str) -> io::Result<(Records, Option<String>)> {
    let bytes = match storage.read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
        Err(e) => return Err(e),
    };
    let d = decode(&bytes);
    if d.damage.is_some() {
        storage.truncate(file, d.valid_len)?;
    }
    let records = d.records.iter().map(|(o, p)| (*o, p.to_vec())).collect();
    Ok((records, d.damage.map(|why| format!("{file}: {why}"))))
}

/// A single value kept as the last valid record of a rotating file
/// `{prefix}.{generation}`.
#[derive(Debug)]
pub struct Register {
    storage: Arc<dyn Storage>,
    prefix: String,
    generation: u64,
    len: u64,
}

/// Bytes after which a register starts a fresh file.
const REGISTER_ROTATE: u64 = 64 * 1024;

impl Register {
    /// Open the register, returning it with its current value (if any) and
    /// any damage found (already truncated away).
    pub fn open<T: DeserializeOwned>(
        storage: Arc<dyn Storage>,
        prefix: &str,
    ) -> io::Result<(Register, Option<T>, Vec<String>)> {
        let mut files: Vec<(u64, String)> = storage
            .list()?
            .into_iter()
            .filter_map(|f| {
                let g = f.strip_prefix(prefix)?.strip_prefix('.')?.parse().ok()?;
                Some((g, f))
            })
            .collect();
        files.sort();
        let mut damage = Vec::new();
        let mut value = None;
        let mut reg = Register {
            storage: storage.clone(),
            prefix: prefix.to_string(),
            generation: 0,
            len: 0,
        };
        // Newest file first; an older one only if the newest holds nothing valid.
        for (g, f) in files.iter().rev() {
            let (records, d) = load(&*storage, f)?;
            damage.extend(d);
            let last = records
                .iter()
                .rev()
                .find_map(|(_, p)| serde_json::from_slice::<T>(p).ok());
            if reg.generation == 0 {
                reg.generation = *g;
                reg.len = records
                    .last()
                    .map_or(0, |(o, p)| o + (HEADER + p.len()) as u64);
            }
            if last.is_some() {
                value = last;
                break;
            }
        }
        Ok((reg, value, damage))
    }

    /// Store `value`; durable when `sync` is true and this returns.
    pub fn store<T: Serialize>(&mut self, value: &T, sync: bool) -> io::Result<()> {
        let payload = serde_json::to_vec(value).map_err(io::Error::other)?;
        let rec = encode(&payload);
        let old = (self.generation > 0).then(|| self.file());
        if self.generation == 0 || self.len + rec.len() as u64 > REGISTER_ROTATE {
            self.generation += 1;
            self.len = 0;
        }
        let file = self.file();
        self.storage.append(&file, &rec)?;
        self.len += rec.len() as u64;
        if sync || old.as_ref() != Some(&file) {
            self.storage.sync(&file)?;
        }
        if let Some(old) = old.filter(|o| *o != file) {
            self.storage.remove(&old)?;
        }
        Ok(())
    }

    fn file(&self) -> String {
        format!("{}.{:020}", self.prefix, self.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::MemStorage;

    #[test]
    fn records_round_trip_and_damage_is_found() {
        let mut bytes = encode(b"one");
        bytes.extend(encode(b""));
        bytes.extend(encode(b"three"));
        let d = decode(&bytes);
        let payloads: Vec<&[u8]> = d.records.iter().map(|r| r.1).collect();
        assert_eq!(payloads, vec![&b"one"[..], b"", b"three"]);
        assert!(d.damage.is_none());
        assert_eq!(d.valid_len as usize, bytes.len());

        // Every torn prefix keeps exactly the whole records before the cut.
        for cut in 0..bytes.len() {
            let d = decode(&bytes[..cut]);
            assert!(d.valid_len as usize <= cut);
            assert_eq!(d.damage.is_some(), d.valid_len as usize != cut, "cut {cut}");
        }
        // A flipped bit anywhere is caught at or before its record.
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            let d = decode(&bad);
            assert!(d.damage.is_some(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn register_keeps_the_last_value_across_rotation_and_torn_writes() {
        let disk = MemStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(disk.clone());
        let (mut reg, v, _) = Register::open::<u64>(storage.clone(), "vote").unwrap();
        assert_eq!(v, None);
        for i in 0..20_000u64 {
            reg.store(&i, i % 100 == 0).unwrap();
        }
        assert!(
            storage.list().unwrap().len() == 1,
            "old generations removed"
        );
        let (_, v, _) = Register::open::<u64>(storage.clone(), "vote").unwrap();
        assert_eq!(v, Some(19_999));
        // Power loss: the last synced value survives; a torn tail is cut.
        disk.crash(|_, tail| tail / 2);
        let (mut reg, v, damage) = Register::open::<u64>(storage.clone(), "vote").unwrap();
        let v = v.unwrap();
        assert!((19_900..20_000).contains(&v), "{v}");
        assert!(damage.len() <= 1);
        reg.store(&7, true).unwrap();
        let (_, v, damage) = Register::open::<u64>(storage, "vote").unwrap();
        assert_eq!((v, damage.len()), (Some(7), 0));
    }
}
