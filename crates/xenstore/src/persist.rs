//! xenstored's durable state: a snapshot (the state file) and a write-ahead log of
//! the changes committed since (`<state file>.wal`).
//!
//! Every request that changes the store appends one record (all of its changes, a
//! transaction commit included) to the log before its reply is sent; with
//! [`SyncPolicy::Fsync`] the reply also waits until the record is on disk
//! (`fdatasync`, shared by every reply waiting at that moment: group commit). When the
//! log outgrows its limit, and at start and at a clean shutdown, the whole store is
//! written as a new snapshot and the log is emptied.
//!
//! At start: load the snapshot, replay the records after it, ignore a torn last
//! record (a crash while it was written: it was never acknowledged), refuse a corrupt
//! record anywhere else. The format is one JSON object per line.
//!
//! This module must not decide anything about the store's semantics: it stores and
//! replays what [`Store`] journals.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::store::{Change, Snapshot, Store};

/// When a logged record must be on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` before the reply (group commit): acknowledged changes survive a
    /// crash of the host too.
    Fsync,
    /// Written to the kernel before the reply, never synced: acknowledged changes
    /// survive a crash (even SIGKILL) of xenstored, not a crash of the host.
    None,
}

impl std::str::FromStr for SyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fsync" => Ok(SyncPolicy::Fsync),
            "none" => Ok(SyncPolicy::None),
            _ => Err(format!("unknown sync policy {s:?} (fsync or none)")),
        }
    }
}

/// Default size of the log that triggers a new snapshot.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 8 << 20;

/// One log record: the changes of one request.
#[derive(Serialize, Deserialize)]
struct Record {
    seq: u64,
    /// The store's generation after the changes.
    generation: u64,
    changes: Vec<Change>,
}

struct Log {
    file: File,
    bytes: u64,
    last_seq: u64,
}

/// The state file and its log, for one running daemon.
pub struct Persistence {
    state_file: PathBuf,
    policy: SyncPolicy,
    max_log_bytes: u64,
    log: Mutex<Log>,
    /// The log's file description again, synced without holding [`Persistence::log`].
    sync_file: File,
    /// Last record written to the log (or held by the snapshot).
    written: AtomicU64,
    /// Last record known to be on disk.
    synced: AtomicU64,
    sync_lock: Mutex<()>,
}

/// What [`Persistence::open`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Log records applied over the snapshot.
    pub replayed: usize,
    /// A torn final record was ignored.
    pub torn_tail: bool,
}

/// The log kept next to `state_file`.
pub fn log_path(state_file: &Path) -> PathBuf {
    let mut p = state_file.as_os_str().to_owned();
    p.push(".wal");
    PathBuf::from(p)
}

fn private_file(path: &Path, append: bool) -> Result<File, String> {
    let mut o = OpenOptions::new();
    o.create(true).mode(0o600);
    if append {
        o.append(true).read(true);
    } else {
        o.write(true).truncate(true);
    }
    o.open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))
}

/// The records of the log at `path`, and whether its last one was torn.
fn read_log(path: &Path) -> Result<(Vec<Record>, bool), String> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let mut records = Vec::new();
    let mut rest = &data[..];
    let mut line_no = 0;
    while !rest.is_empty() {
        line_no += 1;
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            // No newline: the write of the last record did not complete.
            return Ok((records, true));
        };
        let line = &rest[..end];
        rest = &rest[end + 1..];
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => records.push(r),
            // The last line may be garbage after a crash of the host (a file extended
            // before its data reached the disk).
            Err(_) if rest.iter().all(|b| b.is_ascii_whitespace() || *b == 0) => {
                return Ok((records, true))
            }
            Err(e) => {
                return Err(format!(
                    "log {} is corrupt at record {line_no}: {e}",
                    path.display()
                ))
            }
        }
    }
    Ok((records, false))
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            let _ = d.sync_all();
        }
    }
}

impl Persistence {
    /// Loads the snapshot at `state_file` (if any), replays its log, and opens the
    /// log for appending. The store returned journals its changes.
    pub fn open(
        state_file: &Path,
        policy: SyncPolicy,
        max_log_bytes: u64,
    ) -> Result<(Store, Persistence, Recovery), String> {
        if let Some(dir) = state_file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let (mut store, snap_seq) = if state_file.exists() {
            let text = std::fs::read_to_string(state_file)
                .map_err(|e| format!("reading state file {}: {e}", state_file.display()))?;
            let snap: Snapshot = serde_json::from_str(&text)
                .map_err(|e| format!("parsing state file {}: {e}", state_file.display()))?;
            let seq = snap.log_seq;
            (Store::from_snapshot(snap)?, seq)
        } else {
            (Store::new(), 0)
        };
        let log_file = log_path(state_file);
        let (records, torn_tail) = read_log(&log_file)?;
        let mut recovery = Recovery {
            replayed: 0,
            torn_tail,
        };
        let mut last_seq = snap_seq;
        for r in records {
            // Records the snapshot already holds (a crash between writing it and
            // emptying the log) are skipped.
            if r.seq <= snap_seq {
                continue;
            }
            store.apply(r.changes, r.generation);
            last_seq = last_seq.max(r.seq);
            recovery.replayed += 1;
        }
        let check = store.check_consistency();
        if check != "OK\n" {
            return Err(format!(
                "state {} with its log is inconsistent: {check}",
                state_file.display()
            ));
        }
        store.enable_journal();
        let file = private_file(&log_file, true)?;
        let sync_file = file
            .try_clone()
            .map_err(|e| format!("opening {}: {e}", log_file.display()))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let p = Persistence {
            state_file: state_file.to_path_buf(),
            policy,
            max_log_bytes,
            log: Mutex::new(Log {
                file,
                bytes,
                last_seq,
            }),
            sync_file,
            written: AtomicU64::new(last_seq),
            synced: AtomicU64::new(last_seq),
            sync_lock: Mutex::new(()),
        };
        // Start from a fresh snapshot and an empty log: a torn tail never stays in
        // front of new records.
        if bytes > 0 || !state_file.exists() {
            p.snapshot(&store)?;
        }
        Ok((store, p, recovery))
    }

    fn lock_log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last record written (what a reply sent now must wait for).
    pub fn written_seq(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Appends the changes of one request (call with the store locked, so that the
    /// log's order is the store's). Returns the record's sequence number.
    pub fn append(&self, store: &Store, changes: Vec<Change>) -> Result<u64, String> {
        let mut log = self.lock_log();
        let seq = log.last_seq + 1;
        let mut line = serde_json::to_vec(&Record {
            seq,
            generation: store.generation(),
            changes,
        })
        .map_err(|e| format!("encoding a log record: {e}"))?;
        line.push(b'\n');
        log.file
            .write_all(&line)
            .map_err(|e| format!("appending to the log: {e}"))?;
        log.bytes += line.len() as u64;
        log.last_seq = seq;
        self.written.store(seq, Ordering::SeqCst);
        if log.bytes > self.max_log_bytes {
            self.compact(store, &mut log)?;
        }
        Ok(seq)
    }

    /// Returns once record `seq` (and all before it) is as durable as the policy
    /// asks.
    pub fn wait_durable(&self, seq: u64) -> Result<(), String> {
        if self.policy == SyncPolicy::None || self.synced.load(Ordering::SeqCst) >= seq {
            return Ok(());
        }
        let _g = self.sync_lock.lock().unwrap_or_else(|e| e.into_inner());
        // Another reply's sync may have covered this record meanwhile.
        if self.synced.load(Ordering::SeqCst) >= seq {
            return Ok(());
        }
        let target = self.written.load(Ordering::SeqCst);
        self.sync_file
            .sync_data()
            .map_err(|e| format!("syncing the log: {e}"))?;
        self.synced.fetch_max(target, Ordering::SeqCst);
        Ok(())
    }

    /// Writes the whole store as the new snapshot and empties the log (call with the
    /// store locked).
    pub fn snapshot(&self, store: &Store) -> Result<(), String> {
        let mut log = self.lock_log();
        self.compact(store, &mut log)
    }

    fn compact(&self, store: &Store, log: &mut Log) -> Result<(), String> {
        let mut snap = store.snapshot();
        snap.log_seq = log.last_seq;
        let text = serde_json::to_vec(&snap).map_err(|e| format!("encoding the state: {e}"))?;
        let tmp = self.state_file.with_extension("tmp");
        let mut f = private_file(&tmp, false)?;
        f.write_all(&text)
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        if self.policy == SyncPolicy::Fsync {
            f.sync_all()
                .map_err(|e| format!("syncing {}: {e}", tmp.display()))?;
        }
        drop(f);
        std::fs::rename(&tmp, &self.state_file)
            .map_err(|e| format!("renaming to {}: {e}", self.state_file.display()))?;
        if self.policy == SyncPolicy::Fsync {
            sync_dir(&self.state_file);
        }
        // The snapshot holds every record now; they may go.
        log.file
            .set_len(0)
            .map_err(|e| format!("emptying the log: {e}"))?;
        log.bytes = 0;
        self.synced.fetch_max(log.last_seq, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::request::write;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rxen-persist-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn logged_write(s: &mut Store, p: &Persistence, path: &str, v: &[u8]) {
        s.handle(1, &write(0, path, v));
        let changes = s.take_changes();
        assert!(!changes.is_empty());
        p.append(s, changes).unwrap();
    }

    #[test]
    fn replay_restores_writes_and_ignores_a_torn_tail() {
        let d = dir("torn");
        let state = d.join("xs.json");
        let (mut s, p, r) = Persistence::open(&state, SyncPolicy::Fsync, 1 << 20).unwrap();
        assert_eq!(r, Recovery::default());
        s.connect(1, 0, true);
        logged_write(&mut s, &p, "/a/b", b"1");
        logged_write(&mut s, &p, "/a/c", b"2");
        drop((s, p));
        // A crash in the middle of the next record.
        let mut f = OpenOptions::new()
            .append(true)
            .open(log_path(&state))
            .unwrap();
        f.write_all(br#"{"seq":3,"generation":9,"changes":[{"Node":{"pa"#)
            .unwrap();
        drop(f);
        let (s, _p, r) = Persistence::open(&state, SyncPolicy::Fsync, 1 << 20).unwrap();
        assert_eq!(
            r,
            Recovery {
                replayed: 2,
                torn_tail: true
            }
        );
        assert_eq!(s.get("/a/b").unwrap().value, b"1");
        assert_eq!(s.get("/a/c").unwrap().value, b"2");
        // Opening compacted the log: nothing is replayed twice, nothing is torn.
        assert_eq!(std::fs::metadata(log_path(&state)).unwrap().len(), 0);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_corrupt_record_before_others_is_refused() {
        let d = dir("corrupt");
        let state = d.join("xs.json");
        let (mut s, p, _) = Persistence::open(&state, SyncPolicy::None, 1 << 20).unwrap();
        s.connect(1, 0, true);
        logged_write(&mut s, &p, "/a", b"1");
        drop((s, p));
        let mut text = std::fs::read(log_path(&state)).unwrap();
        let good = text.clone();
        text.splice(0..0, b"garbage\n".iter().copied());
        text.extend_from_slice(&good);
        std::fs::write(log_path(&state), text).unwrap();
        let err = Persistence::open(&state, SyncPolicy::None, 1 << 20)
            .err()
            .unwrap();
        assert!(err.contains("corrupt at record 1"), "{err}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_full_log_becomes_a_snapshot() {
        let d = dir("compact");
        let state = d.join("xs.json");
        let (mut s, p, _) = Persistence::open(&state, SyncPolicy::None, 4096).unwrap();
        s.connect(1, 0, true);
        for i in 0..200 {
            logged_write(&mut s, &p, &format!("/n/{i}"), b"value");
        }
        assert!(std::fs::metadata(log_path(&state)).unwrap().len() <= 4096 + 1024);
        drop((s, p));
        let (s, _p, _) = Persistence::open(&state, SyncPolicy::None, 4096).unwrap();
        for i in 0..200 {
            assert_eq!(s.get(&format!("/n/{i}")).unwrap().value, b"value");
        }
        let _ = std::fs::remove_dir_all(d);
    }
}
