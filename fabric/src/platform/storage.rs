//! Durable storage as append-only files with an explicit `sync`.
//!
//! The contract a caller can rely on: after `sync(file)` returns, the bytes
//! appended to `file` before it survive a crash; bytes appended after the
//! last sync may be lost, wholly or as a torn tail. [`MemStorage`] models
//! exactly that for the simulation (see [`MemStorage::crash`]);
//! [`FileStorage`] is the real thing, one directory of files.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Append-only named files with explicit durability.
///
/// Calls are synchronous: they are short (a write, an fsync) and rare on
/// the paths that use them (desired-state changes, not traffic).
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Append `data` to `file`, creating it if needed. Not durable until `sync`.
    fn append(&self, file: &str, data: &[u8]) -> io::Result<()>;
    /// Make everything appended to `file` so far durable.
    fn sync(&self, file: &str) -> io::Result<()>;
    /// The whole content of `file`; `NotFound` if it does not exist.
    fn read(&self, file: &str) -> io::Result<Vec<u8>>;
    /// Cut `file` to `len` bytes (durable once this returns).
    fn truncate(&self, file: &str, len: u64) -> io::Result<()>;
    /// Names of the files, sorted.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Delete `file` (durable once this returns); deleting a missing file is fine.
    fn remove(&self, file: &str) -> io::Result<()>;
    /// How long a sync takes beyond the call itself: zero on a real disk
    /// (the call blocks for as long as it takes); a simulated slow disk
    /// ([`MemStorage::set_sync_delay`]) says how long its caller should
    /// wait, on the runtime's clock, before it counts the sync as done.
    fn sync_delay(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

fn check_name(file: &str) -> io::Result<()> {
    let ok = !file.is_empty()
        && file.len() <= 128
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !file.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad storage file name {file:?}"),
        ))
    }
}

/// Files in one directory of the real file system.
#[derive(Debug)]
pub struct FileStorage {
    dir: PathBuf,
    open: Mutex<BTreeMap<String, File>>,
}

impl FileStorage {
    /// Use (and create) `dir`.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<Self> {
        fs::create_dir_all(dir.as_ref())?;
        Ok(Self {
            dir: dir.as_ref().to_path_buf(),
            open: Mutex::new(BTreeMap::new()),
        })
    }

    fn with_file<T>(
        &self,
        file: &str,
        f: impl FnOnce(&mut File) -> io::Result<T>,
    ) -> io::Result<T> {
        check_name(file)?;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if !open.contains_key(file) {
            let handle = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(file))?;
            // A new file's directory entry must be durable too.
            File::open(&self.dir)?.sync_all()?;
            open.insert(file.to_string(), handle);
        }
        f(open.get_mut(file).expect("inserted above"))
    }
}

impl Storage for FileStorage {
    fn append(&self, file: &str, data: &[u8]) -> io::Result<()> {
        self.with_file(file, |f| f.write_all(data))
    }

    fn sync(&self, file: &str) -> io::Result<()> {
        self.with_file(file, |f| f.sync_data())
    }

    fn read(&self, file: &str) -> io::Result<Vec<u8>> {
        check_name(file)?;
        fs::read(self.dir.join(file))
    }

    fn truncate(&self, file: &str, len: u64) -> io::Result<()> {
        self.with_file(file, |f| {
            f.set_len(len)?;
            f.sync_all()
        })
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                if check_name(name).is_ok() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn remove(&self, file: &str) -> io::Result<()> {
        check_name(file)?;
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(file);
        match fs::remove_file(self.dir.join(file)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        File::open(&self.dir)?.sync_all()
    }
}

#[derive(Debug, Default, Clone)]
struct MemFile {
    /// What a crash leaves behind.
    durable: Vec<u8>,
    /// What readers see now.
    current: Vec<u8>,
}

/// In-memory storage for the simulation: a simulated disk that outlives the
/// node using it (clone the handle into the node's init closure) and loses
/// unsynced writes when [`crash`](MemStorage::crash) is called.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    files: Arc<Mutex<BTreeMap<String, MemFile>>>,
    /// Shared by clones, so the world can slow a node's disk while it runs.
    sync_delay: Arc<Mutex<std::time::Duration>>,
}

impl MemStorage {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Make every sync take `delay` (zero: as fast as memory), as a disk
    /// that is failing or shared with a noisy neighbour does.
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        *self.sync_delay.lock().unwrap_or_else(|p| p.into_inner()) = delay;
    }

    /// Power loss: every file goes back to its durable content, except that
    /// `keep_tail(file, unsynced_len)` bytes of an unsynced append may
    /// survive (a torn write). Pass `|_, _| 0` to lose everything unsynced.
    pub fn crash(&self, mut keep_tail: impl FnMut(&str, usize) -> usize) {
        let mut files = self.lock();
        for (name, f) in files.iter_mut() {
            let appended_only =
                f.current.len() > f.durable.len() && f.current.starts_with(&f.durable);
            let kept = if appended_only {
                let tail = f.current.len() - f.durable.len();
                keep_tail(name, tail).min(tail)
            } else {
                0
            };
            let len = f.durable.len() + kept;
            f.current.truncate(len);
            if !appended_only {
                f.current = f.durable.clone();
            }
            f.durable = f.current.clone();
        }
    }

    /// Bytes appended but not yet synced, over all files.
    pub fn unsynced_bytes(&self) -> usize {
        self.lock()
            .values()
            .map(|f| f.current.len().saturating_sub(f.durable.len()))
            .sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, MemFile>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Storage for MemStorage {
    fn sync_delay(&self) -> std::time::Duration {
        *self.sync_delay.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append(&self, file: &str, data: &[u8]) -> io::Result<()> {
        check_name(file)?;
        self.lock()
            .entry(file.to_string())
            .or_default()
            .current
            .extend_from_slice(data);
        Ok(())
    }

    fn sync(&self, file: &str) -> io::Result<()> {
        check_name(file)?;
        let mut files = self.lock();
        let f = files.entry(file.to_string()).or_default();
        f.durable = f.current.clone();
        Ok(())
    }

    fn read(&self, file: &str) -> io::Result<Vec<u8>> {
        check_name(file)?;
        self.lock()
            .get(file)
            .map(|f| f.current.clone())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, file.to_string()))
    }

    fn truncate(&self, file: &str, len: u64) -> io::Result<()> {
        check_name(file)?;
        let mut files = self.lock();
        let f = files.entry(file.to_string()).or_default();
        f.current.truncate(len as usize);
        f.durable = f.current.clone();
        Ok(())
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.lock().keys().cloned().collect())
    }

    fn remove(&self, file: &str) -> io::Result<()> {
        check_name(file)?;
        self.lock().remove(file);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract(s: &dyn Storage) {
        assert_eq!(s.read("log").unwrap_err().kind(), io::ErrorKind::NotFound);
        s.append("log", b"hello ").unwrap();
        s.append("log", b"world").unwrap();
        s.sync("log").unwrap();
        assert_eq!(s.read("log").unwrap(), b"hello world");
        s.truncate("log", 5).unwrap();
        assert_eq!(s.read("log").unwrap(), b"hello");
        assert_eq!(s.list().unwrap(), vec!["log".to_string()]);
        s.append("other", b"x").unwrap();
        s.remove("other").unwrap();
        s.remove("never-existed").unwrap();
        assert_eq!(s.read("other").unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(s.list().unwrap(), vec!["log".to_string()]);
        assert!(s.append("../escape", b"x").is_err());
        assert!(s.append("", b"x").is_err());
    }

    #[test]
    fn mem_storage_keeps_the_contract() {
        contract(&MemStorage::new());
    }

    #[test]
    fn file_storage_keeps_the_contract() {
        let dir = std::env::temp_dir().join(format!("fabric-storage-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        contract(&FileStorage::open(&dir).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn crash_loses_unsynced_writes_or_tears_them() {
        let disk = MemStorage::new();
        disk.append("log", b"durable.").unwrap();
        disk.sync("log").unwrap();
        disk.append("log", b"volatile").unwrap();
        assert_eq!(disk.unsynced_bytes(), 8);
        let clone = disk.clone();
        clone.crash(|_, _| 0);
        assert_eq!(disk.read("log").unwrap(), b"durable.");

        disk.append("log", b"torn-write").unwrap();
        disk.crash(|name, tail| {
            assert_eq!((name, tail), ("log", 10));
            4
        });
        assert_eq!(disk.read("log").unwrap(), b"durable.torn");
        assert_eq!(disk.unsynced_bytes(), 0);
    }
}
