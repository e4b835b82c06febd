//! The embedded backend: one SQLite file (WAL) under `data_dir`, written by
//! one connection at a time (IMMEDIATE transactions), read by another.
//!
//! One host owns everything in it: the connector leases of several hosts
//! (see `postgres`) are not needed here.

use super::*;
use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

pub struct SqliteStore {
    path: std::path::PathBuf,
    // Writes are serialised (SQLite has one writer); reads use their own
    // connection so a search or a state lookup never waits on a commit.
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS state (
    connector  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BLOB NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (connector, key)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS records (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    idx        TEXT NOT NULL,
    connector  TEXT NOT NULL,
    tenant     TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    body       TEXT NOT NULL,
    written_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    UNIQUE (connector, idx, record_id)
);
CREATE INDEX IF NOT EXISTS records_by_index ON records (idx, seq);
-- The fields analysts query most (see `INDEXED_FIELDS`): search pushes exact
-- terms on them down to these expression indexes.
CREATE INDEX IF NOT EXISTS records_by_tenant ON records (idx, tenant, seq);
CREATE INDEX IF NOT EXISTS records_by_msg_class ON records (idx, lower(json_extract(body, '$.msg_class')));
CREATE INDEX IF NOT EXISTS records_by_event_type ON records (idx, lower(json_extract(body, '$.event_type')));
CREATE INDEX IF NOT EXISTS records_by_sender ON records (idx, lower(json_extract(body, '$.email.sender.address')));
CREATE INDEX IF NOT EXISTS records_by_timestamp ON records (idx, json_extract(body, '$.timestamp'));

CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    connector  TEXT NOT NULL,
    tenant     TEXT NOT NULL,
    action_id  TEXT NOT NULL,
    kind       TEXT NOT NULL,
    target     TEXT NOT NULL,
    reason     TEXT NOT NULL,
    params     TEXT NOT NULL,
    status     TEXT NOT NULL DEFAULT 'pending',
    attempts   INTEGER NOT NULL DEFAULT 0,
    outcome    TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    UNIQUE (connector, action_id)
);

CREATE TABLE IF NOT EXISTS runs (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    connector  TEXT NOT NULL,
    tenant     TEXT NOT NULL,
    operation  TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms   INTEGER NOT NULL,
    outcome    TEXT NOT NULL,
    summary    TEXT,
    error      TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_connector ON runs (connector, id);

-- One row per request taken from a vendor rate-limit pool; rows older than
-- the pool's window are pruned when the pool is next used.
CREATE TABLE IF NOT EXISTS request_budget (
    pool  TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS request_budget_by_pool ON request_budget (pool, at_ms);

-- When the scheduler of `dphost run` next starts each connector.
CREATE TABLE IF NOT EXISTS schedule (
    connector   TEXT PRIMARY KEY,
    next_run_ms INTEGER NOT NULL
);

-- Who each connector name belongs to: its data is kept under the name, so
-- its tenant and component may never change (see `claim_identities`).
-- `component` is NULL when taken over from a store older than the table.
CREATE TABLE IF NOT EXISTS connector_identity (
    connector TEXT PRIMARY KEY,
    tenant    TEXT NOT NULL,
    component TEXT,
    since_ms  INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// A `runs` row selected as connector, tenant, operation, started_ms,
/// ended_ms, outcome, summary, error.
fn run_from_row(r: &rusqlite::Row) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        connector: r.get(0)?,
        tenant: r.get(1)?,
        operation: r.get(2)?,
        started_ms: r.get(3)?,
        ended_ms: r.get(4)?,
        outcome: r.get(5)?,
        summary: r.get(6)?,
        error: r.get(7)?,
    })
}

/// Runs kept per connector in the history (`runs`).
pub(super) const RUNS_KEPT: i64 = 200;

/// The schema version this build writes; bumped with every migration.
/// 2: `records.change_seq` and the forwarding cursors (`migrate_forwarding`).
/// 3: `connector_identity`, filled from the records already stored.
const SCHEMA_VERSION: i64 = 3;

impl SqliteStore {
    /// Opens (creating if needed) `data_dir/dphost.db`.
    pub fn open(data_dir: &Path) -> Result<SqliteStore> {
        Self::open_in(data_dir).with_context(|| {
            format!(
                "cannot open the store in {}: the data dir must be writable and have free space",
                data_dir.display()
            )
        })
    }

    fn open_in(data_dir: &Path) -> Result<SqliteStore> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
        let path = data_dir.join("dphost.db");
        let mut writer = open_connection(&path)?;
        tune_writer(&writer)?;
        // Several processes open the store at once (`dphost run` beside
        // `dphost search`): schema checks and migrations happen inside one
        // IMMEDIATE transaction, so exactly one of them migrates.
        let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            bail!(
                "{} was written by a newer dphost (schema {version}, this build knows {SCHEMA_VERSION}): upgrade dphost",
                path.display()
            );
        }
        tx.execute_batch(SCHEMA)
            .with_context(|| format!("cannot create the schema in {}", path.display()))?;
        migrate_forwarding(&tx)
            .with_context(|| format!("cannot add the forwarding schema to {}", path.display()))?;
        migrate_response(&tx)
            .with_context(|| format!("cannot create the response tables in {}", path.display()))?;
        if version < 3 {
            // Connectors that already hold data keep the tenant of their
            // oldest record; their component is learnt at the next start.
            tx.execute_batch(
                "INSERT OR IGNORE INTO connector_identity (connector, tenant, component, since_ms)
                 SELECT connector, tenant, NULL, min(written_ms) FROM records GROUP BY connector",
            )
            .with_context(|| {
                format!("cannot add the connector identities to {}", path.display())
            })?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        let reader = open_connection(&path)?;
        Ok(SqliteStore {
            path,
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }

    /// Runs `f` in an immediate transaction on the writer, for modules that
    /// keep their own tables in this store (`response`).
    pub fn write_tx<T>(&self, f: impl FnOnce(&rusqlite::Transaction) -> Result<T>) -> Result<T> {
        let mut conn = self.writer.lock().expect("store writer poisoned");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit().context("committing to the store")?;
        Ok(out)
    }

    /// Runs `f` on the reader connection.
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.reader.lock().expect("store reader poisoned");
        f(&conn)
    }
}

impl Backend for SqliteStore {
    fn state_get(&self, connector: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let conn = self.reader.lock().expect("store reader poisoned");
        let mut stmt =
            conn.prepare_cached("SELECT value FROM state WHERE connector = ?1 AND key = ?2")?;
        let value = stmt
            .query_row(params![connector, key], |r| r.get(0))
            .optional()
            .context("reading connector state")?;
        Ok(value)
    }

    /// Applies a whole batch in one transaction: all of it or none of it.
    fn commit(&self, owner: &Owner, batch: &Batch) -> Result<CommitOutcome> {
        let mut conn = self.writer.lock().expect("store writer poisoned");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        let mut outcome = CommitOutcome::default();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO records (idx, connector, tenant, record_id, body, written_ms, updated_ms, change_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)
                 ON CONFLICT (connector, idx, record_id) DO NOTHING",
            )?;
            let mut upsert = tx.prepare_cached(
                "INSERT INTO records (idx, connector, tenant, record_id, body, written_ms, updated_ms, change_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)
                 ON CONFLICT (connector, idx, record_id)
                 DO UPDATE SET body = excluded.body, updated_ms = excluded.updated_ms,
                               change_seq = CASE WHEN records.body = excluded.body
                                            THEN records.change_seq ELSE excluded.change_seq END",
            )?;
            // Inside this IMMEDIATE transaction no other writer runs, so the
            // change sequence grows in commit order (see `migrate_forwarding`).
            let mut change_seq: i64 = if batch.records.is_empty() {
                0
            } else {
                tx.query_row(
                    "SELECT coalesce(max(change_seq), 0) FROM records",
                    [],
                    |r| r.get(0),
                )?
            };
            for r in &batch.records {
                let stmt = match r.mode {
                    WriteMode::Insert => &mut insert,
                    WriteMode::Upsert => &mut upsert,
                };
                change_seq += 1;
                let n = stmt.execute(params![
                    r.index.as_str(),
                    owner.connector,
                    owner.tenant,
                    r.id,
                    r.body,
                    now,
                    change_seq
                ])?;
                if n == 0 {
                    outcome.duplicates += 1;
                } else {
                    outcome.written += 1;
                }
            }
            let mut queue = tx.prepare_cached(
                "INSERT INTO outbox (connector, tenant, action_id, kind, target, reason, params, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
                 ON CONFLICT (connector, action_id) DO NOTHING",
            )?;
            for a in &batch.actions {
                outcome.actions_queued += queue.execute(params![
                    owner.connector,
                    owner.tenant,
                    a.id,
                    a.kind,
                    a.target,
                    a.reason,
                    a.params,
                    now
                ])? as u32;
            }
            let mut set = tx.prepare_cached(
                "INSERT INTO state (connector, key, value, updated_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (connector, key) DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms",
            )?;
            let mut delete =
                tx.prepare_cached("DELETE FROM state WHERE connector = ?1 AND key = ?2")?;
            for (key, value) in &batch.state {
                match value {
                    Some(v) => set.execute(params![owner.connector, key, v, now])?,
                    None => delete.execute(params![owner.connector, key])?,
                };
            }
        }
        tx.commit().context("committing the batch")?;
        Ok(outcome)
    }

    /// For each id, whether it is stored in `index` for `connector`.
    fn contains(&self, connector: &str, index: Index, ids: &[String]) -> Result<Vec<bool>> {
        let conn = self.reader.lock().expect("store reader poisoned");
        let mut stmt = conn.prepare_cached(
            "SELECT 1 FROM records WHERE connector = ?1 AND idx = ?2 AND record_id = ?3",
        )?;
        ids.iter()
            .map(|id| Ok(stmt.exists(params![connector, index.as_str(), id])?))
            .collect()
    }

    fn record_run(&self, run: &RunRecord) -> Result<()> {
        let conn = self.writer.lock().expect("store writer poisoned");
        conn.prepare_cached(
            "INSERT INTO runs (connector, tenant, operation, started_ms, ended_ms, outcome, summary, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            run.connector,
            run.tenant,
            run.operation,
            run.started_ms,
            run.ended_ms,
            run.outcome,
            run.summary,
            run.error
        ])?;
        // The history is for status and troubleshooting: keep the newest
        // runs, and always the last successful collection (its checkpoint).
        conn.prepare_cached(
            "DELETE FROM runs WHERE connector = ?1
               AND id < (SELECT id FROM runs WHERE connector = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)
               AND id IS NOT (SELECT max(id) FROM runs
                              WHERE connector = ?1 AND operation = 'collect' AND outcome = 'ok')",
        )?
        .execute(params![run.connector, RUNS_KEPT - 1])?;
        Ok(())
    }

    /// The last successful collection of `connector`, however old.
    fn last_ok_collect(&self, connector: &str) -> Result<Option<RunRecord>> {
        let conn = self.reader.lock().expect("store reader poisoned");
        let mut stmt = conn.prepare_cached(
            "SELECT connector, tenant, operation, started_ms, ended_ms, outcome, summary, error
             FROM runs WHERE connector = ?1 AND operation = 'collect' AND outcome = 'ok'
             ORDER BY id DESC LIMIT 1",
        )?;
        Ok(stmt
            .query_row(params![connector], run_from_row)
            .optional()?)
    }

    /// Records when the scheduler next starts `connector`.
    fn set_next_run(&self, connector: &str, next_run_ms: i64) -> Result<()> {
        let conn = self.writer.lock().expect("store writer poisoned");
        conn.prepare_cached(
            "INSERT INTO schedule (connector, next_run_ms) VALUES (?1, ?2)
             ON CONFLICT (connector) DO UPDATE SET next_run_ms = excluded.next_run_ms",
        )?
        .execute(params![connector, next_run_ms])?;
        Ok(())
    }

    fn next_run(&self, connector: &str) -> Result<Option<i64>> {
        let conn = self.reader.lock().expect("store reader poisoned");
        let mut stmt =
            conn.prepare_cached("SELECT next_run_ms FROM schedule WHERE connector = ?1")?;
        Ok(stmt
            .query_row(params![connector], |r| r.get(0))
            .optional()?)
    }

    /// Requests taken per rate-limit pool since `since_ms`.
    fn budget_used(&self, since_ms: i64) -> Result<Vec<(String, i64)>> {
        let conn = self.reader.lock().expect("store reader poisoned");
        let mut stmt = conn.prepare_cached(
            "SELECT pool, count(*) FROM request_budget WHERE at_ms > ?1 GROUP BY pool ORDER BY pool",
        )?;
        let rows = stmt.query_map(params![since_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The newest run of `connector` whose operation is one of `operations`,
    /// however many runs of other operations came after it.
    fn newest_run(&self, connector: &str, operations: &[&str]) -> Result<Option<RunRecord>> {
        use rusqlite::types::Value as Sql;
        let conn = self.reader.lock().expect("store reader poisoned");
        let placeholders: Vec<String> = (0..operations.len())
            .map(|i| format!("?{}", i + 2))
            .collect();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT connector, tenant, operation, started_ms, ended_ms, outcome, summary, error
             FROM runs WHERE connector = ?1 AND operation IN ({})
             ORDER BY id DESC LIMIT 1",
            placeholders.join(", ")
        ))?;
        let values = std::iter::once(Sql::Text(connector.to_string()))
            .chain(operations.iter().map(|o| Sql::Text(o.to_string())));
        Ok(stmt
            .query_row(rusqlite::params_from_iter(values), run_from_row)
            .optional()?)
    }

    /// Streams the records of `index` that pass `filter`, in commit order.
    /// The filter narrows the scan in SQL (indexes, then a substring
    /// prefilter); the caller does the exact matching.
    fn scan(
        &self,
        index: Index,
        filter: &ScanFilter,
        visit: &mut dyn FnMut(StoredRecord) -> Result<bool>,
    ) -> Result<()> {
        use rusqlite::types::Value as Sql;
        let conn = self.reader.lock().expect("store reader poisoned");
        let mut sql = String::from(
            "SELECT seq, idx, connector, tenant, record_id, body FROM records WHERE idx = ?1",
        );
        let mut values: Vec<Sql> = vec![Sql::Text(index.as_str().to_string())];
        let mut bind = |sql: &mut String, clause: &str, v: Sql| {
            values.push(v);
            sql.push_str(&clause.replace('?', &format!("?{}", values.len())));
        };
        if let Some(t) = &filter.tenant {
            bind(&mut sql, " AND tenant = ?", Sql::Text(t.clone()));
        }
        for (path, value) in &filter.equals {
            let field = INDEXED_FIELDS
                .iter()
                .find(|f| f.0 == path)
                .with_context(|| format!("`{path}` is not an indexed field"))?;
            bind(
                &mut sql,
                &format!(" AND lower(json_extract(body, '{}')) = ?", field.1),
                Sql::Text(value.to_lowercase()),
            );
        }
        if let Some(ms) = filter.since_ms {
            bind(
                &mut sql,
                " AND json_extract(body, '$.timestamp') >= ?",
                Sql::Integer(ms),
            );
        }
        if let Some(ms) = filter.until_ms {
            bind(
                &mut sql,
                " AND json_extract(body, '$.timestamp') < ?",
                Sql::Integer(ms),
            );
        }
        for s in &filter.must_contain {
            bind(
                &mut sql,
                " AND body LIKE ? ESCAPE '\\'",
                Sql::Text(format!("%{}%", escape_like(s))),
            );
        }
        sql.push_str(" ORDER BY seq");
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
        while let Some(r) = rows.next()? {
            let rec = StoredRecord {
                seq: r.get(0)?,
                index: r.get(1)?,
                connector: r.get(2)?,
                tenant: r.get(3)?,
                id: r.get(4)?,
                body: r.get(5)?,
            };
            if !visit(rec)? {
                break;
            }
        }
        Ok(())
    }

    /// Takes one request from `pool` (a rolling window of `window_ms`) if
    /// fewer than `limit` are in it at `now_ms`. Ok: requests left. Err: when
    /// (epoch ms) the oldest counted request leaves the window.
    fn budget_take(
        &self,
        pool: &str,
        limit: u32,
        window_ms: i64,
        now_ms: i64,
    ) -> Result<Result<u32, i64>> {
        let mut conn = self.writer.lock().expect("store writer poisoned");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "DELETE FROM request_budget WHERE pool = ?1 AND at_ms <= ?2",
            params![pool, now_ms - window_ms],
        )?;
        let (used, oldest): (i64, Option<i64>) = tx.query_row(
            "SELECT count(*), min(at_ms) FROM request_budget WHERE pool = ?1",
            params![pool],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let result = if used < limit as i64 {
            tx.execute(
                "INSERT INTO request_budget (pool, at_ms) VALUES (?1, ?2)",
                params![pool, now_ms],
            )?;
            Ok((limit as i64 - used - 1) as u32)
        } else {
            Err(oldest.unwrap_or(now_ms) + window_ms)
        };
        tx.commit()?;
        Ok(result)
    }

    /// Requests left in `pool` at `now_ms`.
    fn budget_remaining(&self, pool: &str, limit: u32, window_ms: i64, now_ms: i64) -> Result<u32> {
        let conn = self.reader.lock().expect("store reader poisoned");
        let used: i64 = conn.query_row(
            "SELECT count(*) FROM request_budget WHERE pool = ?1 AND at_ms > ?2",
            params![pool, now_ms - window_ms],
            |r| r.get(0),
        )?;
        Ok((limit as i64 - used).max(0) as u32)
    }

    /// Number of records per index for `connector` (all connectors if None).
    fn count(&self, index: Index, connector: Option<&str>) -> Result<u64> {
        let conn = self.reader.lock().expect("store reader poisoned");
        let n: i64 = match connector {
            Some(c) => conn.query_row(
                "SELECT count(*) FROM records WHERE idx = ?1 AND connector = ?2",
                params![index.as_str(), c],
                |r| r.get(0),
            )?,
            None => conn.query_row(
                "SELECT count(*) FROM records WHERE idx = ?1",
                params![index.as_str()],
                |r| r.get(0),
            )?,
        };
        Ok(n as u64)
    }

    /// Compares each configured connector with the identity the store keeps
    /// for its name. With `claim`, and only if nothing conflicts, names not
    /// seen before are recorded (and a component unknown since the upgrade
    /// is filled in), in one transaction, so two processes starting at once
    /// cannot record different identities.
    fn check_identities(&self, wanted: &[Identity], claim: bool) -> Result<Vec<IdentityConflict>> {
        let mut conn = self.writer.lock().expect("store writer poisoned");
        let tx = if claim {
            conn.transaction_with_behavior(TransactionBehavior::Immediate)?
        } else {
            conn.transaction_with_behavior(TransactionBehavior::Deferred)?
        };
        let mut conflicts = Vec::new();
        let mut missing = Vec::new();
        {
            let mut get = tx.prepare_cached(
                "SELECT tenant, component, since_ms FROM connector_identity WHERE connector = ?1",
            )?;
            for w in wanted {
                let kept: Option<(String, Option<String>, i64)> = get
                    .query_row(params![w.connector], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()?;
                let Some((tenant, component, since_ms)) = kept else {
                    missing.push(w);
                    continue;
                };
                let mut conflict = |key, kept: &str, configured: &str| {
                    if kept != configured {
                        conflicts.push(IdentityConflict {
                            connector: w.connector.clone(),
                            key,
                            kept: kept.to_string(),
                            configured: configured.to_string(),
                            since_ms,
                        });
                    }
                };
                conflict("tenant", &tenant, &w.tenant);
                match &component {
                    Some(c) => conflict("component", c, &w.component),
                    None => missing.push(w),
                }
            }
        }
        if claim && conflicts.is_empty() {
            let now = now_ms();
            let mut put = tx.prepare_cached(
                "INSERT INTO connector_identity (connector, tenant, component, since_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (connector) DO UPDATE SET component = excluded.component
                 WHERE connector_identity.component IS NULL",
            )?;
            for w in missing {
                put.execute(params![w.connector, w.tenant, w.component, now])?;
            }
            drop(put);
            tx.commit().context("recording the connector identities")?;
        }
        Ok(conflicts)
    }

    /// The output's cursor in `index` (0 if it never delivered anything).
    fn forward_cursor(&self, output: &str, index: Index) -> Result<i64> {
        let conn = self.reader.lock().expect("store reader poisoned");
        let v = conn
            .prepare_cached(
                "SELECT change_seq FROM forward_cursors WHERE output = ?1 AND idx = ?2",
            )?
            .query_row(params![output, index.as_str()], |r| r.get(0))
            .optional()?;
        Ok(v.unwrap_or(0))
    }

    /// Up to `limit` records of `index` changed after `after`, in change order.
    fn forward_after(&self, index: Index, after: i64, limit: usize) -> Result<Vec<ForwardRecord>> {
        let conn = self.reader.lock().expect("store reader poisoned");
        let mut stmt = conn.prepare_cached(
            "SELECT change_seq, connector, tenant, record_id, body, written_ms FROM records
             WHERE idx = ?1 AND change_seq > ?2 ORDER BY change_seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![index.as_str(), after, limit as i64], |r| {
            Ok(ForwardRecord {
                change_seq: r.get(0)?,
                index,
                connector: r.get(1)?,
                tenant: r.get(2)?,
                id: r.get(3)?,
                body: r.get(4)?,
                written_ms: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Moves the output's cursors (after the destination accepted the
    /// records up to them) and counts the delivery, in one transaction.
    fn forward_advance(
        &self,
        output: &str,
        cursors: &[(Index, i64)],
        delivered: u64,
    ) -> Result<()> {
        let mut conn = self.writer.lock().expect("store writer poisoned");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        for (index, seq) in cursors {
            tx.prepare_cached(
                "INSERT INTO forward_cursors (output, idx, change_seq, updated_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (output, idx) DO UPDATE SET
                     change_seq = max(change_seq, excluded.change_seq), updated_ms = excluded.updated_ms",
            )?
            .execute(params![output, index.as_str(), seq, now])?;
        }
        tx.prepare_cached(
            "INSERT INTO forward_outputs (output, delivered, last_delivery_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (output) DO UPDATE SET
                 delivered = delivered + excluded.delivered, last_delivery_ms = excluded.last_delivery_ms",
        )?
        .execute(params![output, delivered as i64, now])?;
        tx.commit().context("moving the forwarding cursor")?;
        Ok(())
    }

    /// Keeps the output's last error (`None` clears it after a recovery).
    fn forward_error(&self, output: &str, error: Option<&str>) -> Result<()> {
        let conn = self.writer.lock().expect("store writer poisoned");
        conn.prepare_cached(
            "INSERT INTO forward_outputs (output, last_error, last_error_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (output) DO UPDATE SET
                 last_error = excluded.last_error, last_error_ms = excluded.last_error_ms",
        )?
        .execute(params![output, error, error.map(|_| now_ms())])?;
        Ok(())
    }

    /// Where the output stands in `index`: cursor and what is left to send.
    fn forward_position(&self, output: &str, index: Index) -> Result<ForwardPosition> {
        let cursor = self.forward_cursor(output, index)?;
        let conn = self.reader.lock().expect("store reader poisoned");
        let (pending, oldest): (i64, Option<i64>) = conn
            .prepare_cached(
                "SELECT count(*), min(updated_ms) FROM records WHERE idx = ?1 AND change_seq > ?2",
            )?
            .query_row(params![index.as_str(), cursor], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        Ok(ForwardPosition {
            index,
            cursor,
            pending: pending as u64,
            oldest_pending_ms: oldest,
        })
    }

    /// What the output delivered so far and its last error.
    fn forward_activity(&self, output: &str) -> Result<ForwardActivity> {
        let conn = self.reader.lock().expect("store reader poisoned");
        let row = conn
            .prepare_cached(
                "SELECT delivered, last_delivery_ms, last_error, last_error_ms
                 FROM forward_outputs WHERE output = ?1",
            )?
            .query_row(params![output], |r| {
                Ok(ForwardActivity {
                    delivered: r.get::<_, i64>(0)? as u64,
                    last_delivery_ms: r.get(1)?,
                    last_error: r.get(2)?,
                    last_error_ms: r.get(3)?,
                })
            })
            .optional()?;
        Ok(row.unwrap_or_default())
    }

    fn describe(&self) -> String {
        format!("SQLite {}", self.path.display())
    }

    fn outbox_due(&self, now_ms: i64, limit: usize) -> Result<Vec<Action>> {
        let c = self.reader.lock().expect("store reader poisoned");
        let mut stmt = c.prepare_cached(&format!(
            "SELECT {ACTION_COLUMNS} FROM outbox o LEFT JOIN response_progress p ON p.outbox_seq = o.seq
             WHERE o.status IN ('pending', 'running') AND coalesce(p.next_attempt_ms, 0) <= ?1
             ORDER BY o.seq LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![now_ms, limit as i64], action_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn outbox_expired(&self, now_ms: i64, limit: usize) -> Result<Vec<Action>> {
        let c = self.reader.lock().expect("store reader poisoned");
        let mut stmt = c.prepare_cached(&format!(
            "SELECT {ACTION_COLUMNS} FROM outbox o JOIN response_progress p ON p.outbox_seq = o.seq
             WHERE o.status IN ('done', 'failed') AND p.expires_ms IS NOT NULL AND p.expires_ms <= ?1
               AND p.next_attempt_ms <= ?1
             ORDER BY p.expires_ms, o.seq LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![now_ms, limit as i64], action_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn outbox_claim(&self, a: &Action, requested: Option<&Audit>) -> Result<bool> {
        self.write_tx(|tx| {
            let n = tx.execute(
                "UPDATE outbox SET status = 'running', attempts = attempts + 1, updated_ms = ?2
                 WHERE seq = ?1 AND status IN ('pending', 'running') AND attempts = ?3",
                params![a.seq, now_ms(), a.attempts],
            )?;
            if n != 1 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO response_progress (outbox_seq) VALUES (?1) ON CONFLICT (outbox_seq) DO NOTHING",
                params![a.seq],
            )?;
            if let Some(audit) = requested {
                write_audit(tx, a, audit)?;
            }
            Ok(true)
        })
    }

    fn outbox_accounts(&self, seq: i64) -> Result<Vec<AccountRow>> {
        let c = self.reader.lock().expect("store reader poisoned");
        let mut stmt = c.prepare_cached(
            "SELECT dn, old_uac, state FROM response_accounts WHERE outbox_seq = ?1 ORDER BY dn",
        )?;
        let rows = stmt.query_map(params![seq], |r| {
            Ok(AccountRow {
                dn: r.get(0)?,
                old_uac: r.get(1)?,
                state: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn outbox_set_account(
        &self,
        a: &Action,
        dn: &str,
        old_uac: Option<i64>,
        state: &str,
        audit: Option<&Audit>,
    ) -> Result<()> {
        self.write_tx(|tx| {
            tx.execute(
                "INSERT INTO response_accounts (outbox_seq, dn, old_uac, state) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (outbox_seq, dn) DO UPDATE SET old_uac = coalesce(excluded.old_uac, old_uac), state = excluded.state",
                params![a.seq, dn, old_uac, state],
            )?;
            if let Some(audit) = audit {
                write_audit(tx, a, audit)?;
            }
            Ok(())
        })
    }

    fn outbox_forget_account(&self, a: &Action, dn: &str) -> Result<()> {
        self.write_tx(|tx| {
            tx.execute(
                "DELETE FROM response_accounts WHERE outbox_seq = ?1 AND dn = ?2",
                params![a.seq, dn],
            )?;
            Ok(())
        })
    }

    fn outbox_finish(
        &self,
        a: &Action,
        status: &str,
        outcome: &str,
        expires_ms: Option<i64>,
        audit: Option<&Audit>,
    ) -> Result<()> {
        self.write_tx(|tx| {
            tx.execute(
                "UPDATE outbox SET status = ?2, outcome = ?3, updated_ms = ?4 WHERE seq = ?1",
                params![a.seq, status, outcome, now_ms()],
            )?;
            tx.execute(
                "INSERT INTO response_progress (outbox_seq, expires_ms) VALUES (?1, ?2)
                 ON CONFLICT (outbox_seq) DO UPDATE SET expires_ms = excluded.expires_ms",
                params![a.seq, expires_ms],
            )?;
            if let Some(audit) = audit {
                write_audit(tx, a, audit)?;
            }
            Ok(())
        })
    }

    fn outbox_retry(
        &self,
        a: &Action,
        next_ms: i64,
        refused: bool,
        error: &str,
        audit: &Audit,
    ) -> Result<()> {
        self.write_tx(|tx| {
            tx.execute(
                "UPDATE outbox SET status = 'pending', outcome = ?2, updated_ms = ?3 WHERE seq = ?1",
                params![a.seq, format!("retrying: {error}"), now_ms()],
            )?;
            tx.execute(
                "INSERT INTO response_progress (outbox_seq, next_attempt_ms, op_failures) VALUES (?1, ?2, ?3)
                 ON CONFLICT (outbox_seq) DO UPDATE SET next_attempt_ms = excluded.next_attempt_ms,
                     op_failures = op_failures + excluded.op_failures",
                params![a.seq, next_ms, refused as i64],
            )?;
            write_audit(tx, a, audit)
        })
    }

    fn outbox_reenable_retry(&self, a: &Action, next_ms: i64, audit: &Audit) -> Result<()> {
        self.write_tx(|tx| {
            tx.execute(
                "UPDATE response_progress SET next_attempt_ms = ?2, reenable_failures = reenable_failures + 1
                 WHERE outbox_seq = ?1",
                params![a.seq, next_ms],
            )?;
            write_audit(tx, a, audit)
        })
    }

    fn outbox_others(&self, ad: &str, dn: &str, except_seq: i64) -> Result<Vec<OtherRow>> {
        let c = self.reader.lock().expect("store reader poisoned");
        let mut stmt = c.prepare_cached(
            "SELECT o.seq, o.action_id, o.target, json_extract(o.params, '$.alert_id'), o.status,
                    p.expires_ms, json_extract(o.params, '$.duration_ms'), a.old_uac, a.state
             FROM response_accounts a JOIN outbox o ON o.seq = a.outbox_seq
             LEFT JOIN response_progress p ON p.outbox_seq = o.seq
             WHERE a.dn = ?2 COLLATE NOCASE AND a.outbox_seq != ?3
               AND json_extract(o.params, '$.ad') = ?1
             ORDER BY o.seq",
        )?;
        let rows = stmt.query_map(params![ad, dn, except_seq], |r| {
            Ok(OtherRow {
                seq: r.get(0)?,
                action_id: r.get(1)?,
                target: r.get(2)?,
                alert_id: r.get(3)?,
                status: r.get(4)?,
                expires_ms: r.get(5)?,
                duration_ms: r.get::<_, Option<i64>>(6)?.filter(|d| *d > 0),
                old_uac: r.get(7)?,
                state: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn outbox_hand_over(
        &self,
        from: &Action,
        dn: &str,
        old_uac: Option<i64>,
        heir_seq: i64,
        audit: &Audit,
    ) -> Result<()> {
        self.write_tx(|tx| {
            tx.execute(
                "UPDATE response_accounts SET state = 'handed-over' WHERE outbox_seq = ?1 AND dn = ?2",
                params![from.seq, dn],
            )?;
            tx.execute(
                "UPDATE response_accounts SET state = 'set', old_uac = coalesce(?3, old_uac)
                 WHERE outbox_seq = ?1 AND dn = ?2 COLLATE NOCASE",
                params![heir_seq, dn, old_uac],
            )?;
            write_audit(tx, from, audit)
        })
    }

    fn outbox_summary(&self, connector: &str) -> Result<ConnectorActions> {
        let mut out = ConnectorActions::default();
        let c = self.reader.lock().expect("store reader poisoned");
        let mut stmt = c.prepare_cached(&format!(
            "SELECT {OUTCOME_CASE}, count(*) FROM outbox WHERE connector = ?1 GROUP BY 1"
        ))?;
        for row in stmt.query_map(params![connector], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })? {
            let (k, n) = row?;
            *out.by_outcome.entry(k).or_default() += n as u64;
        }
        let last: Option<String> = c
            .query_row(
                "SELECT body FROM records WHERE idx = 'actions' AND connector = ?1 ORDER BY seq DESC LIMIT 1",
                params![connector],
                |r| r.get(0),
            )
            .optional()?;
        out.last = last.and_then(|b| serde_json::from_str(&b).ok());
        Ok(out)
    }

    fn response_lease_take(
        &self,
        me: &str,
        ttl_ms: i64,
        replacing: Option<&str>,
    ) -> Result<Option<LeaseHolder>> {
        self.write_tx(|tx| {
            let now = now_ms();
            let current: Option<(String, i64)> = tx
                .query_row(
                    "SELECT owner, expires_ms FROM response_lease WHERE id = 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((owner, until_ms)) = current {
                let free = owner == me || until_ms <= now || replacing == Some(owner.as_str());
                if !free {
                    return Ok(Some(LeaseHolder { owner, until_ms }));
                }
            }
            tx.execute(
                "INSERT INTO response_lease (id, owner, expires_ms) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, expires_ms = excluded.expires_ms",
                params![me, now + ttl_ms],
            )?;
            Ok(None)
        })
    }

    fn response_lease_release(&self, me: &str) -> Result<()> {
        self.write_tx(|tx| {
            tx.execute(
                "DELETE FROM response_lease WHERE id = 1 AND owner = ?1",
                params![me],
            )?;
            Ok(())
        })
    }

    fn shared(&self) -> bool {
        false
    }

    /// One process owns a SQLite store: every connector is this host's.
    fn lease_round(&self, req: &LeaseRequest) -> Result<LeaseRound> {
        Ok(LeaseRound {
            held: req.connectors.iter().map(|c| (c.clone(), 0)).collect(),
            hosts: 1,
            share: req.connectors.len(),
        })
    }

    fn lease_release_all(&self, _host: &str) -> Result<()> {
        Ok(())
    }

    fn leases(&self) -> Result<Vec<LeaseInfo>> {
        Ok(Vec::new())
    }
}

/// Forwarding (`crate::forward`) needs a cursor that also sees updates: an
/// upserted alert keeps its `seq` but must be shipped again. `change_seq` is
/// set on every insert and every upsert that changes the body to one more than the largest stored
/// value, inside the writer's IMMEDIATE transaction, so it grows in commit
/// order and a reader never sees a higher value committed before a lower one.
/// Records are never deleted, so a value is never handed out twice (a
/// retention job that deletes records must keep the row holding the
/// largest `change_seq`). Existing records get `change_seq = seq`.
fn migrate_forwarding(conn: &Connection) -> Result<()> {
    let has_column: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('records') WHERE name = 'change_seq'")?
        .exists([])?;
    if !has_column {
        // The caller holds an IMMEDIATE transaction: no other process adds it.
        conn.execute_batch(
            "ALTER TABLE records ADD COLUMN change_seq INTEGER;
             UPDATE records SET change_seq = seq;",
        )?;
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS records_by_change ON records (idx, change_seq);
         CREATE INDEX IF NOT EXISTS records_change_seq ON records (change_seq);
         -- One row per output and index: the last change_seq the destination accepted.
         CREATE TABLE IF NOT EXISTS forward_cursors (
             output     TEXT NOT NULL,
             idx        TEXT NOT NULL,
             change_seq INTEGER NOT NULL,
             updated_ms INTEGER NOT NULL,
             PRIMARY KEY (output, idx)
         ) WITHOUT ROWID;
         -- Per output: what it delivered and its last error (for status).
         CREATE TABLE IF NOT EXISTS forward_outputs (
             output           TEXT PRIMARY KEY,
             delivered        INTEGER NOT NULL DEFAULT 0,
             last_delivery_ms INTEGER,
             last_error       TEXT,
             last_error_ms    INTEGER
         ) WITHOUT ROWID;",
    )?;
    Ok(())
}

/// The response module's tables (see `crate::response::outbox`).
const RESPONSE_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS response_progress (
    outbox_seq        INTEGER PRIMARY KEY,
    next_attempt_ms   INTEGER NOT NULL DEFAULT 0,
    expires_ms        INTEGER,
    audit_n           INTEGER NOT NULL DEFAULT 0,
    op_failures       INTEGER NOT NULL DEFAULT 0,
    reenable_failures INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS response_accounts (
    outbox_seq INTEGER NOT NULL,
    dn         TEXT NOT NULL,
    old_uac    INTEGER,
    state      TEXT NOT NULL,
    PRIMARY KEY (outbox_seq, dn)
);
CREATE INDEX IF NOT EXISTS outbox_by_status ON outbox (kind, status, seq);
-- Other actions' records of the same account (overlapping alerts).
CREATE INDEX IF NOT EXISTS response_accounts_by_dn ON response_accounts (dn COLLATE NOCASE);
-- Which process performs the response actions (`response::lease`).
CREATE TABLE IF NOT EXISTS response_lease (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    owner      TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
"#;

/// Columns added to `response_progress` after its first release: stores
/// made before get them here.
const PROGRESS_COLUMNS: [(&str, &str); 2] = [
    ("op_failures", "INTEGER NOT NULL DEFAULT 0"),
    ("reenable_failures", "INTEGER NOT NULL DEFAULT 0"),
];

fn migrate_response(tx: &Connection) -> Result<()> {
    tx.execute_batch(RESPONSE_SCHEMA)?;
    let have: Vec<String> = tx
        .prepare("SELECT name FROM pragma_table_info('response_progress')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (name, decl) in PROGRESS_COLUMNS {
        if !have.iter().any(|h| h == name) {
            tx.execute_batch(&format!(
                "ALTER TABLE response_progress ADD COLUMN {name} {decl}"
            ))?;
        }
    }
    Ok(())
}

/// How `outbox_summary` names an action's outcome (shared with `postgres`).
pub(super) const OUTCOME_CASE: &str =
    "CASE WHEN status IN ('pending', 'running') AND outcome IS NULL THEN 'queued'
     WHEN status IN ('pending', 'running') THEN 'retrying'
     WHEN status = 'reenabled' THEN 're-enabled'
     WHEN status = 'failed' THEN 'failed'
     WHEN status = 'expired' AND outcome IN ('handed-over', 're-enable-skipped') THEN outcome
     ELSE coalesce(outcome, status) END";

/// The columns `action_from_row` reads (shared with `postgres`).
pub(super) const ACTION_COLUMNS: &str = "o.seq, o.connector, o.tenant, o.action_id, o.kind, o.target, o.reason, o.params, o.attempts, o.created_ms, o.status, o.outcome, coalesce(p.op_failures, 0), coalesce(p.reenable_failures, 0), p.expires_ms";

fn action_from_row(r: &rusqlite::Row) -> rusqlite::Result<Action> {
    let params: String = r.get(7)?;
    Ok(Action {
        seq: r.get(0)?,
        connector: r.get(1)?,
        tenant: r.get(2)?,
        action_id: r.get(3)?,
        kind: r.get(4)?,
        target: r.get(5)?,
        reason: r.get(6)?,
        params: serde_json::from_str(&params).unwrap_or(Value::Null),
        attempts: r.get(8)?,
        created_ms: r.get(9)?,
        status: r.get(10)?,
        outcome: r.get(11)?,
        op_failures: r.get(12)?,
        reenable_failures: r.get(13)?,
        expires_ms: r.get(14)?,
    })
}

/// The audit record of an outbox change, numbered per action, in the
/// Actions index.
fn write_audit(tx: &rusqlite::Transaction, a: &Action, audit: &Audit) -> Result<()> {
    tx.execute(
        "INSERT INTO response_progress (outbox_seq) VALUES (?1) ON CONFLICT (outbox_seq) DO NOTHING",
        params![a.seq],
    )?;
    let n: i64 = tx.query_row(
        "UPDATE response_progress SET audit_n = audit_n + 1 WHERE outbox_seq = ?1 RETURNING audit_n",
        params![a.seq],
        |r| r.get(0),
    )?;
    let now = now_ms();
    tx.execute(
        "INSERT INTO records (idx, connector, tenant, record_id, body, written_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT (connector, idx, record_id) DO NOTHING",
        params![
            Index::Actions.as_str(),
            a.connector,
            a.tenant,
            format!("{}/{n}", a.action_id),
            audit.body.to_string(),
            now
        ],
    )?;
    Ok(())
}

pub(super) fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Page cache of the writer connection, KiB. SQLite's default (2 MiB) is
/// smaller than the indexes a busy window's commits touch, so inserts read
/// and spill the same pages again and again (most of a large window's
/// commit time was `pread`/`pwrite` of those pages).
const WRITER_CACHE_KIB: i64 = 64 * 1024;
/// WAL pages between automatic checkpoints (SQLite's default is 1000):
/// fewer, larger checkpoints copy a page rewritten by several commits once.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 8192;

/// Settings of the writer connection for bulk commits.
fn tune_writer(conn: &Connection) -> Result<()> {
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    Ok(())
}

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)
        .with_context(|| format!("cannot open the store {}", path.display()))?;
    // Every statement below may meet another process's lock (`dphost
    // search` beside a committing `dphost run`): wait for it, do not fail.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    enable_wal(&conn, path)?;
    // FULL: a commit is on disk before `sink.commit` returns, so what a
    // connector was told is stored (and the checkpoint with it) survives a
    // power cut or a file system that fails, not only a process crash. One
    // fsync per batch; batches are hundreds of records.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// Advice when `e` comes from the data dir's file system (full, read-only,
/// failing), not from dphost itself.
pub(super) fn fault_advice(e: &anyhow::Error) -> Option<&'static str> {
    let code = e
        .chain()
        .find_map(|c| match c.downcast_ref::<rusqlite::Error>() {
            Some(rusqlite::Error::SqliteFailure(f, _)) => Some(f.code),
            _ => None,
        });
    Some(match code? {
        rusqlite::ErrorCode::DiskFull => {
            "the data dir's file system is full: free space there; the next run resumes from the last checkpoint"
        }
        rusqlite::ErrorCode::ReadOnly => {
            "the store is read-only: make the data dir and its files writable by dphost"
        }
        rusqlite::ErrorCode::SystemIoFailure => {
            "the data dir could not be written (its file system turned read-only or its disk is failing): check the kernel log (dmesg) and the mount, repair the file system, then run again; collection resumes from the last checkpoint"
        }
        _ => return None,
    })
}

/// How long a store operation waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Switches the store to write-ahead logging: readers never block the
/// writer, and a commit is one append to the log.
///
/// SQLite answers the switch with "database is locked" at once, without
/// calling the busy handler, while another process opens the same new file;
/// so it is retried here until one of them has switched it.
fn enable_wal(conn: &Connection, path: &Path) -> Result<()> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)) {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) => bail!(
                "{} cannot use write-ahead logging (its journal mode stays {mode}): put the data dir on a local file system",
                path.display()
            ),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot switch {} to write-ahead logging", path.display())
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner {
            connector: "c1".into(),
            tenant: "t1".into(),
            fence: None,
        }
    }

    fn rec(id: &str, body: &str, mode: WriteMode) -> NewRecord {
        NewRecord {
            index: Index::Syslog,
            id: id.into(),
            body: body.into(),
            mode,
        }
    }

    #[test]
    fn commit_is_idempotent_for_inserts_and_replaces_upserts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let batch = Batch {
            records: vec![
                rec("a", r#"{"n":1}"#, WriteMode::Insert),
                rec("b", r#"{"n":2}"#, WriteMode::Upsert),
            ],
            actions: vec![NewAction {
                id: "x".into(),
                kind: "disable-user".into(),
                target: "u@example.com".into(),
                reason: "r".into(),
                params: "{}".into(),
            }],
            state: vec![("checkpoint".into(), Some(b"10".to_vec()))],
        };
        let first = store.commit(&owner(), &batch).unwrap();
        assert_eq!(
            first,
            CommitOutcome {
                written: 2,
                duplicates: 0,
                actions_queued: 1
            }
        );
        let mut again = batch.clone();
        again.records[1].body = r#"{"n":3}"#.into();
        let second = store.commit(&owner(), &again).unwrap();
        assert_eq!(
            second,
            CommitOutcome {
                written: 1,
                duplicates: 1,
                actions_queued: 0
            }
        );
        let mut bodies = Vec::new();
        store
            .scan(Index::Syslog, &ScanFilter::default(), |r| {
                bodies.push(r.body);
                Ok(true)
            })
            .unwrap();
        assert_eq!(bodies, vec![r#"{"n":1}"#, r#"{"n":3}"#]);
        assert_eq!(
            store.state_get("c1", "checkpoint").unwrap(),
            Some(b"10".to_vec())
        );
        assert_eq!(store.state_get("other", "checkpoint").unwrap(), None);
        assert_eq!(
            store
                .contains("c1", Index::Syslog, &["a".into(), "zz".into()])
                .unwrap(),
            vec![true, false]
        );
        assert_eq!(
            store
                .contains("other", Index::Syslog, &["a".into()])
                .unwrap(),
            vec![false]
        );
    }

    #[test]
    fn state_deletes_and_reopen_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut b = Batch::default();
            b.state.push(("k".into(), Some(b"v".to_vec())));
            b.state.push(("gone".into(), Some(b"v".to_vec())));
            store.commit(&owner(), &b).unwrap();
            let b = Batch {
                state: vec![("gone".into(), None)],
                ..Default::default()
            };
            store.commit(&owner(), &b).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.state_get("c1", "k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(store.state_get("c1", "gone").unwrap(), None);
    }

    #[test]
    fn budget_is_a_rolling_window_per_pool() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let day = 86_400_000;
        assert_eq!(
            store.budget_take("cred/siem", 2, day, 1_000).unwrap(),
            Ok(1)
        );
        assert_eq!(
            store.budget_take("cred/siem", 2, day, 2_000).unwrap(),
            Ok(0)
        );
        assert_eq!(
            store.budget_take("cred/siem", 2, day, 3_000).unwrap(),
            Err(1_000 + day)
        );
        assert_eq!(
            store.budget_remaining("cred/siem", 2, day, 3_000).unwrap(),
            0
        );
        // Another pool, or another credential, is not affected.
        assert_eq!(
            store.budget_take("cred/clicks", 2, day, 3_000).unwrap(),
            Ok(1)
        );
        assert_eq!(
            store.budget_take("other/siem", 2, day, 3_000).unwrap(),
            Ok(1)
        );
        // A day after the first request, one slot is free again.
        assert_eq!(
            store
                .budget_remaining("cred/siem", 2, day, 1_000 + day)
                .unwrap(),
            1
        );
        assert_eq!(
            store.budget_take("cred/siem", 2, day, 1_000 + day).unwrap(),
            Ok(0)
        );
    }

    #[test]
    fn scan_prefilter_escapes_like_wildcards() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let b = Batch {
            records: vec![
                rec("1", r#"{"v":"100%"}"#, WriteMode::Insert),
                rec("2", r#"{"v":"1000"}"#, WriteMode::Insert),
            ],
            ..Default::default()
        };
        store.commit(&owner(), &b).unwrap();
        let mut ids = Vec::new();
        store
            .scan(
                Index::Syslog,
                &ScanFilter {
                    must_contain: vec!["100%".into()],
                    ..Default::default()
                },
                |r| {
                    ids.push(r.id);
                    Ok(true)
                },
            )
            .unwrap();
        assert_eq!(ids, vec!["1"]);
    }

    #[test]
    fn a_version_1_store_gets_change_seq_from_seq() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("dphost.db")).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute_batch(
                "INSERT INTO records (idx, connector, tenant, record_id, body, written_ms, updated_ms)
                 VALUES ('syslog', 'c1', 't1', 'old', '{}', 1, 1);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let b = Batch {
            records: vec![rec("new", "{}", WriteMode::Insert)],
            ..Default::default()
        };
        store.commit(&owner(), &b).unwrap();
        let got: Vec<(String, i64)> = store
            .forward_after(Index::Syslog, 0, 10)
            .unwrap()
            .into_iter()
            .map(|r| (r.id, r.change_seq))
            .collect();
        assert_eq!(got, vec![("old".to_string(), 1), ("new".to_string(), 2)]);
    }
    fn identity(connector: &str, tenant: &str, component: &str) -> Identity {
        Identity {
            connector: connector.into(),
            tenant: tenant.into(),
            component: component.into(),
        }
    }

    #[test]
    fn a_connector_name_keeps_its_tenant_and_component() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = identity("a", "acme", "proofpoint_tap");
        // Checking does not record anything; claiming does.
        assert!(store
            .check_identities(std::slice::from_ref(&a), false)
            .unwrap()
            .is_empty());
        let other = identity("a", "globex", "proofpoint_tap");
        assert!(store
            .check_identities(std::slice::from_ref(&other), true)
            .unwrap()
            .is_empty());
        let conflicts = store
            .check_identities(std::slice::from_ref(&a), true)
            .unwrap();
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(
            (
                conflicts[0].key,
                conflicts[0].kept.as_str(),
                conflicts[0].configured.as_str()
            ),
            ("tenant", "globex", "acme")
        );
        // A conflict claims nothing else: `b` stays unknown.
        let b = identity("b", "initech", "proofpoint_tap");
        assert_eq!(
            store.check_identities(&[a, b.clone()], true).unwrap().len(),
            1
        );
        let b_elsewhere = identity("b", "umbrella", "proofpoint_tap");
        assert!(store
            .check_identities(&[b_elsewhere], false)
            .unwrap()
            .is_empty());
        // Reopened (a restart), the identity is still there.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let conflicts = store
            .check_identities(&[identity("a", "globex", "sandbox_probe")], true)
            .unwrap();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].key, "component");
        assert!(store.check_identities(&[other], true).unwrap().is_empty());
    }

    #[test]
    fn a_version_2_store_takes_identities_from_its_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            store
                .commit(
                    &owner(),
                    &Batch {
                        records: vec![rec("x", "{}", WriteMode::Insert)],
                        ..Default::default()
                    },
                )
                .unwrap();
            store
                .write_tx(|tx| {
                    tx.execute_batch("DELETE FROM connector_identity; PRAGMA user_version = 2;")?;
                    Ok(())
                })
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let moved = store
            .check_identities(&[identity("c1", "t2", "proofpoint_tap")], true)
            .unwrap();
        assert_eq!(moved.len(), 1, "c1's records are tenant t1's");
        assert_eq!(moved[0].kept, "t1");
        // The first start after the upgrade records the component.
        assert!(store
            .check_identities(&[identity("c1", "t1", "proofpoint_tap")], true)
            .unwrap()
            .is_empty());
        let changed = store
            .check_identities(&[identity("c1", "t1", "other")], true)
            .unwrap();
        assert_eq!(changed[0].key, "component");
    }

    /// `dphost run` and `dphost search` may open a store that does not exist
    /// yet at the same moment; CI once failed a search with "database is
    /// locked" (SQLite's switch to WAL does not wait for a busy handler).
    #[test]
    fn concurrent_opens_of_a_new_store_all_succeed() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
            let openers: Vec<_> = (0..8)
                .map(|_| {
                    let path = dir.path().to_path_buf();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        barrier.wait();
                        Store::open(&path).map(|_| ()).map_err(|e| format!("{e:#}"))
                    })
                })
                .collect();
            for opener in openers {
                opener.join().unwrap().unwrap();
            }
        }
    }
}
