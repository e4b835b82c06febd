//! Reading a workspace's store directly (read-only), for what `dphost
//! search` does not show: state keys, the outbox, record ids per connector,
//! the run history and the database's own integrity check. The same
//! helpers work on SQLite and on PostgreSQL; the SQL they take is the
//! common subset of both.

use crate::{TestStore, Workspace};
use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

/// One value of a row, whichever database it came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
}

impl Cell {
    pub fn int(&self) -> Result<i64> {
        match self {
            Cell::Int(i) => Ok(*i),
            other => anyhow::bail!("expected an integer, got {other:?}"),
        }
    }

    pub fn text(&self) -> Result<String> {
        match self {
            Cell::Text(s) => Ok(s.clone()),
            other => anyhow::bail!("expected text, got {other:?}"),
        }
    }
}

impl Workspace {
    /// The SQLite store, opened read-only (tests of SQLite itself).
    pub fn db(&self) -> Result<Connection> {
        anyhow::ensure!(
            self.store == TestStore::Sqlite,
            "this test reads the SQLite file: run it without DPHOST_TEST_STORE=postgres (or use Workspace::rows)"
        );
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

    /// Every row of `sql` (text parameters `$1`, `$2`, ...), on whichever
    /// backend the workspace uses.
    pub fn rows(&self, sql: &str, params: &[&str]) -> Result<Vec<Vec<Cell>>> {
        match &self.store {
            TestStore::Sqlite => {
                let db = self.db()?;
                let mut stmt = db.prepare(sql)?;
                let n = stmt.column_count();
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(params.iter()), |r| {
                        (0..n)
                            .map(|i| {
                                Ok(match r.get_ref(i)? {
                                    rusqlite::types::ValueRef::Null => Cell::Null,
                                    rusqlite::types::ValueRef::Integer(v) => Cell::Int(v),
                                    rusqlite::types::ValueRef::Text(t)
                                    | rusqlite::types::ValueRef::Blob(t) => {
                                        Cell::Text(String::from_utf8_lossy(t).into_owned())
                                    }
                                    rusqlite::types::ValueRef::Real(f) => Cell::Int(f as i64),
                                })
                            })
                            .collect()
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            }
            TestStore::Postgres { db } => {
                let mut client = crate::pg::server()?.connect(db)?;
                let params: Vec<&(dyn postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p as &(dyn postgres::types::ToSql + Sync))
                    .collect();
                let rows = client.query(sql, &params)?;
                rows.iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| {
                                use postgres::types::Type;
                                let t = r.columns()[i].type_().clone();
                                Ok(if t == Type::INT8 {
                                    r.get::<_, Option<i64>>(i).map_or(Cell::Null, Cell::Int)
                                } else if t == Type::INT4 {
                                    r.get::<_, Option<i32>>(i)
                                        .map_or(Cell::Null, |v| Cell::Int(v.into()))
                                } else if t == Type::BYTEA {
                                    r.get::<_, Option<Vec<u8>>>(i).map_or(Cell::Null, |v| {
                                        Cell::Text(String::from_utf8_lossy(&v).into_owned())
                                    })
                                } else {
                                    r.get::<_, Option<String>>(i).map_or(Cell::Null, Cell::Text)
                                })
                            })
                            .collect()
                    })
                    .collect()
            }
        }
    }

    /// The one integer `sql` selects (e.g. a count).
    pub fn scalar(&self, sql: &str) -> Result<i64> {
        let rows = self.rows(sql, &[])?;
        rows.first()
            .and_then(|r| r.first())
            .with_context(|| format!("`{sql}` returned no row"))?
            .int()
    }

    /// A connector's state value, as text.
    pub fn state(&self, connector: &str, key: &str) -> Result<Option<String>> {
        if self.store == TestStore::Sqlite {
            return Ok(self
                .db()?
                .query_row(
                    "SELECT value FROM state WHERE connector = ?1 AND key = ?2",
                    [connector, key],
                    |r| r.get::<_, Vec<u8>>(0),
                )
                .optional()?
                .map(|v| String::from_utf8_lossy(&v).into_owned()));
        }
        let rows = self.rows(
            "SELECT value FROM state WHERE connector = $1 AND key = $2",
            &[connector, key],
        )?;
        rows.first().map(|r| r[0].text()).transpose()
    }

    /// Record ids a connector has in an index, sorted.
    pub fn record_ids(&self, connector: &str, index: &str) -> Result<Vec<String>> {
        let mut ids = self
            .rows(
                "SELECT record_id FROM records WHERE connector = $1 AND idx = $2",
                &[connector, index],
            )?
            .iter()
            .map(|r| r[0].text())
            .collect::<Result<Vec<_>>>()?;
        ids.sort();
        Ok(ids)
    }

    /// `(outcome, started_ms, ended_ms)` of a connector's runs, oldest first.
    pub fn runs(&self, connector: &str) -> Result<Vec<(String, i64, i64)>> {
        self.rows(
            "SELECT outcome, started_ms, ended_ms FROM runs WHERE connector = $1 ORDER BY id",
            &[connector],
        )?
        .iter()
        .map(|r| Ok((r[0].text()?, r[1].int()?, r[2].int()?)))
        .collect()
    }

    /// The database's own integrity check passes (SQLite), and every index
    /// holds each (connector, record id) once.
    pub fn assert_store_intact(&self) -> Result<()> {
        if self.store == TestStore::Sqlite {
            let check: String = self
                .db()?
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            anyhow::ensure!(check == "ok", "integrity_check: {check}");
        }
        let dups = self.scalar(
            "SELECT count(*) FROM (SELECT 1 FROM records GROUP BY connector, idx, record_id HAVING count(*) > 1) AS d",
        )?;
        anyhow::ensure!(dups == 0, "{dups} record ids stored twice");
        Ok(())
    }

    /// Every outbox row: (target, params JSON).
    pub fn outbox(&self) -> Result<Vec<(String, String)>> {
        self.rows("SELECT target, params FROM outbox ORDER BY seq", &[])?
            .iter()
            .map(|r| Ok((r[0].text()?, r[1].text()?)))
            .collect()
    }
}
