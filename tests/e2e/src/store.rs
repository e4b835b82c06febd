//! Reading a workspace's store directly (read-only), for what `dphost
//! search` does not show: state keys, the outbox, record ids per connector,
//! the run history and the database's own integrity check.

use crate::Workspace;
use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

impl Workspace {
    /// The store, opened read-only.
    pub fn db(&self) -> Result<Connection> {
        let path = self.dir.path().join("data/dphost.db");
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening {}", path.display()))?;
        // A running dphost may hold a lock for a moment (a WAL checkpoint).
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        Ok(conn)
    }

    /// A connector's state value, as text.
    pub fn state(&self, connector: &str, key: &str) -> Result<Option<String>> {
        Ok(self
            .db()?
            .query_row(
                "SELECT value FROM state WHERE connector = ?1 AND key = ?2",
                [connector, key],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Record ids a connector has in an index, sorted.
    pub fn record_ids(&self, connector: &str, index: &str) -> Result<Vec<String>> {
        let db = self.db()?;
        let mut stmt = db.prepare(
            "SELECT record_id FROM records WHERE connector = ?1 AND idx = ?2 ORDER BY record_id",
        )?;
        let ids = stmt
            .query_map([connector, index], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    /// `(outcome, started_ms, ended_ms)` of a connector's runs, oldest first.
    pub fn runs(&self, connector: &str) -> Result<Vec<(String, i64, i64)>> {
        let db = self.db()?;
        let mut stmt = db.prepare(
            "SELECT outcome, started_ms, ended_ms FROM runs WHERE connector = ?1 ORDER BY id",
        )?;
        let runs = stmt
            .query_map([connector], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(runs)
    }

    /// `PRAGMA integrity_check` says `ok`, and every index holds each
    /// (connector, record id) once.
    pub fn assert_store_intact(&self) -> Result<()> {
        let db = self.db()?;
        let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        anyhow::ensure!(check == "ok", "integrity_check: {check}");
        let dups: i64 = db.query_row(
            "SELECT count(*) FROM (SELECT 1 FROM records GROUP BY connector, idx, record_id HAVING count(*) > 1)",
            [],
            |r| r.get(0),
        )?;
        anyhow::ensure!(dups == 0, "{dups} record ids stored twice");
        Ok(())
    }

    /// Every outbox row: (target, params JSON).
    pub fn outbox(&self) -> Result<Vec<(String, String)>> {
        let db = self.db()?;
        let mut stmt = db.prepare("SELECT target, params FROM outbox ORDER BY seq")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}
