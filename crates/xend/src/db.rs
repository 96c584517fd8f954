//! xend's embedded SQLite database (`STATE_DIR/xend.db`): managed domain configs, the
//! record of running domains (for re-adoption after a restart) and the domain-id
//! counter (ids are never reused while a domain lives).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use rxen_xend_api::DomainState;
use rxen_xlcfg::DomainSpec;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored config is unreadable: {0}")]
    Json(#[from] serde_json::Error),
    #[error("stored domain state {0:?} is unknown")]
    State(String),
    #[error("the database file is gone or was replaced: {0}")]
    Detached(String),
}

/// A domain with a VMM, or a preserved one, as recorded for re-adoption.
#[derive(Debug, Clone)]
pub struct RunningRecord {
    pub domid: u32,
    pub name: String,
    pub uuid: String,
    pub spec: DomainSpec,
    pub pid: u32,
    pub started: f64,
    pub managed: bool,
    /// Running/paused/... for live domains; crashed/shutdown for preserved ones.
    pub state: DomainState,
    /// How a preserved domain ended.
    pub exit_reason: Option<String>,
}

fn state_from_str(s: &str) -> Result<DomainState, DbError> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| DbError::State(s.to_string()))
}

pub struct Db {
    conn: Connection,
    path: std::path::PathBuf,
    /// (device, inode) of the file opened, to notice it being removed or replaced.
    identity: (u64, u64),
}

fn file_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

impl Db {
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS managed (name TEXT PRIMARY KEY, spec TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS running (domid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, uuid TEXT NOT NULL,
                 spec TEXT NOT NULL, pid INTEGER NOT NULL, started REAL NOT NULL, managed INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )?;
        // Columns added after the first release: preserved domains survive restarts.
        let has_state: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('running') WHERE name='state'")?
            .exists([])?;
        if !has_state {
            conn.execute_batch(
                "ALTER TABLE running ADD COLUMN state TEXT NOT NULL DEFAULT 'running';
                 ALTER TABLE running ADD COLUMN exit_reason TEXT;",
            )?;
        }
        let identity = file_identity(path).map_err(|e| DbError::Detached(e.to_string()))?;
        Ok(Db {
            conn,
            path: path.to_path_buf(),
            identity,
        })
    }

    /// Whether the file this database was opened from is still at its path (someone
    /// may have removed or replaced it while xend runs).
    pub fn detached(&self) -> bool {
        file_identity(&self.path).map_or(true, |id| id != self.identity)
    }

    /// Writes everything this (still open) database holds back to its path and reopens
    /// it there: nothing is lost when the file was removed under a running xend.
    pub fn restore(&mut self) -> Result<(), DbError> {
        let tmp = self.path.with_extension("restore");
        let _ = std::fs::remove_file(&tmp);
        self.conn.execute(
            "VACUUM INTO ?1",
            params![tmp.to_string_lossy().into_owned()],
        )?;
        std::fs::rename(&tmp, &self.path).map_err(|e| DbError::Detached(e.to_string()))?;
        *self = Db::open(&self.path.clone())?;
        Ok(())
    }

    /// The next domain id after the highest ever handed out (1..32751, wrapping and
    /// skipping ids in `live`).
    pub fn allocate_domid(&self, live: &dyn Fn(u32) -> bool) -> Result<Option<u32>, DbError> {
        let last: u32 = self
            .conn
            .query_row("SELECT value FROM meta WHERE key='last_domid'", [], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0);
        let mut id = last;
        for _ in 0..32751 {
            id = if id >= 32751 { 1 } else { id + 1 };
            if !live(id) {
                self.conn.execute("INSERT INTO meta(key, value) VALUES('last_domid', ?1) ON CONFLICT(key) DO UPDATE SET value=?1", params![id])?;
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    pub fn put_managed(&self, spec: &DomainSpec) -> Result<(), DbError> {
        self.conn.execute(
            "INSERT INTO managed(name, spec) VALUES(?1, ?2) ON CONFLICT(name) DO UPDATE SET spec=?2",
            params![spec.name, serde_json::to_string(spec)?],
        )?;
        Ok(())
    }

    pub fn delete_managed(&self, name: &str) -> Result<bool, DbError> {
        Ok(self
            .conn
            .execute("DELETE FROM managed WHERE name=?1", params![name])?
            > 0)
    }

    pub fn rename_managed(&self, old: &str, spec: &DomainSpec) -> Result<(), DbError> {
        self.conn.execute(
            "UPDATE managed SET name=?2, spec=?3 WHERE name=?1",
            params![old, spec.name, serde_json::to_string(spec)?],
        )?;
        Ok(())
    }

    pub fn managed(&self) -> Result<Vec<DomainSpec>, DbError> {
        let mut st = self
            .conn
            .prepare("SELECT spec FROM managed ORDER BY name")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(serde_json::from_str(&r?)?);
        }
        Ok(out)
    }

    pub fn put_running(&self, r: &RunningRecord) -> Result<(), DbError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO running(domid, name, uuid, spec, pid, started, managed, state, exit_reason) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![r.domid, r.name, r.uuid, serde_json::to_string(&r.spec)?, r.pid, r.started, r.managed as i32, r.state.as_str(), r.exit_reason],
        )?;
        Ok(())
    }

    pub fn delete_running(&self, domid: u32) -> Result<(), DbError> {
        self.conn
            .execute("DELETE FROM running WHERE domid=?1", params![domid])?;
        Ok(())
    }

    pub fn running(&self) -> Result<Vec<RunningRecord>, DbError> {
        let mut st = self.conn.prepare(
            "SELECT domid, name, uuid, spec, pid, started, managed, state, exit_reason FROM running ORDER BY domid",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, f64>(5)?,
                r.get::<_, i32>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, Option<String>>(8)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (domid, name, uuid, spec, pid, started, managed, state, exit_reason) = row?;
            out.push(RunningRecord {
                domid,
                name,
                uuid,
                spec: serde_json::from_str(&spec)?,
                pid,
                started,
                managed: managed != 0,
                state: state_from_str(&state)?,
                exit_reason,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_running_and_ids() {
        let dir = std::env::temp_dir().join(format!("rxen-xend-db-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let db = Db::open(&dir.join("t.db")).unwrap();
        let (spec, _) = DomainSpec::from_xl("name='a'\nmemory=64").unwrap();
        db.put_managed(&spec).unwrap();
        // Removing the file under the open database is noticed and repaired.
        assert!(!db.detached());
        std::fs::remove_file(dir.join("t.db")).unwrap();
        assert!(db.detached());
        let mut db = db;
        db.restore().unwrap();
        assert!(!db.detached());
        assert_eq!(db.managed().unwrap(), vec![spec.clone()]);
        assert_eq!(db.allocate_domid(&|_| false).unwrap(), Some(1));
        assert_eq!(db.allocate_domid(&|id| id == 2).unwrap(), Some(3));
        db.put_running(&RunningRecord {
            domid: 3,
            name: "a".into(),
            uuid: "u".into(),
            spec,
            pid: 7,
            started: 1.5,
            managed: true,
            state: DomainState::Crashed,
            exit_reason: Some("crash".into()),
        })
        .unwrap();
        assert_eq!(db.running().unwrap()[0].pid, 7);
        assert_eq!(db.running().unwrap()[0].state, DomainState::Crashed);
        db.delete_running(3).unwrap();
        assert!(db.running().unwrap().is_empty());
        assert!(db.delete_managed("a").unwrap());
        assert!(!db.delete_managed("a").unwrap());
        let _ = std::fs::remove_dir_all(dir);
    }
}
