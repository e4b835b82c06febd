//! The response actions' durable state, in the host's store: the `outbox`
//! rows the components queued (their `status`, `attempts` and `outcome`),
//! plus the tables of this module:
//!
//! - `response_progress`: per outbox row, when it may be tried again, when
//!   the accounts it disabled are re-enabled, how many attempts the DC
//!   refused (`op_failures`; connection problems are not counted there) and
//!   how many re-enable attempts failed, and its audit counter;
//! - `response_accounts`: per outbox row and account DN, what was done to it
//!   (`intent` = about to set the bit, with the value read before; `set` =
//!   this product set the bit and re-enables it; `already`, `protected`,
//!   `would-set`, `gone`, `reenabled`, `reenable-skipped`, `handed-over` =
//!   the "we set it" fact moved to another action that still wants the
//!   account disabled);
//! - `response_lease`: which process performs the actions (`lease`).
//!
//! Every state change is one transaction together with its audit record in
//! the Actions index, so the audit never tells more or less than happened.
//!
//! Outbox `status`: `pending` (queued or waiting for a retry) -> `running`
//! (claimed; a crash leaves it so and the next pass resumes it) -> `done`
//! (`outcome` says how) or `failed`; at expiry `done` -> `reenabled` (it
//! re-enabled an account) or `expired` (nothing to re-enable: handed over,
//! already enabled again, or not ours).

use crate::store::{Index, Store};
use anyhow::{Context, Result};
use rusqlite::{params, OptionalExtension};
use serde_json::Value;

const SCHEMA: &str = r#"
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
"#;

/// Columns added to `response_progress` after its first release: stores
/// made before get them here.
const PROGRESS_COLUMNS: [(&str, &str); 2] = [
    ("op_failures", "INTEGER NOT NULL DEFAULT 0"),
    ("reenable_failures", "INTEGER NOT NULL DEFAULT 0"),
];

pub fn ensure_schema(store: &Store) -> Result<()> {
    store
        .write_tx(|tx| {
            tx.execute_batch(SCHEMA)?;
            tx.execute_batch(super::lease::SCHEMA)?;
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
        })
        .context("creating the response tables")
}

/// An outbox row the worker acts on.
#[derive(Debug, Clone)]
pub struct Action {
    pub seq: i64,
    pub connector: String,
    pub tenant: String,
    pub action_id: String,
    pub kind: String,
    pub target: String,
    pub reason: String,
    pub params: Value,
    pub attempts: i64,
    pub created_ms: i64,
    pub status: String,
    pub outcome: Option<String>,
    /// Attempts the DC refused (connection problems not counted).
    pub op_failures: i64,
    /// Failed re-enable attempts.
    pub reenable_failures: i64,
    pub expires_ms: Option<i64>,
}

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

const ACTION_COLUMNS: &str = "o.seq, o.connector, o.tenant, o.action_id, o.kind, o.target, o.reason, o.params, o.attempts, o.created_ms, o.status, o.outcome, coalesce(p.op_failures, 0), coalesce(p.reenable_failures, 0), p.expires_ms";

/// Actions to perform now: queued, waiting for a retry that is due, or
/// claimed by a run that never finished (a crash).
pub fn due(store: &Store, now_ms: i64, limit: usize) -> Result<Vec<Action>> {
    store.read(|c| {
        let mut stmt = c.prepare_cached(&format!(
            "SELECT {ACTION_COLUMNS} FROM outbox o LEFT JOIN response_progress p ON p.outbox_seq = o.seq
             WHERE o.status IN ('pending', 'running') AND coalesce(p.next_attempt_ms, 0) <= ?1
             ORDER BY o.seq LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![now_ms, limit as i64], action_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    })
}

/// Ended actions whose accounts are due to be re-enabled (and whose last
/// failed re-enable attempt, if any, has waited its backoff). A `failed`
/// action may have disabled some of its accounts before it gave up.
pub fn expired(store: &Store, now_ms: i64, limit: usize) -> Result<Vec<Action>> {
    store.read(|c| {
        let mut stmt = c.prepare_cached(&format!(
            "SELECT {ACTION_COLUMNS} FROM outbox o JOIN response_progress p ON p.outbox_seq = o.seq
             WHERE o.status IN ('done', 'failed') AND p.expires_ms IS NOT NULL AND p.expires_ms <= ?1
               AND p.next_attempt_ms <= ?1
             ORDER BY p.expires_ms, o.seq LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![now_ms, limit as i64], action_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    })
}

/// One audit record for the Actions index.
pub struct Audit {
    pub body: Value,
}

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
    let now = crate::store::now_ms();
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

/// Claims an action for this pass; the first claim audits `requested`.
/// False if the action is no longer as `a` was read (another pass claimed
/// or ended it meanwhile): then nothing is changed and the caller skips it.
pub fn claim(store: &Store, a: &Action, requested: Option<Audit>) -> Result<bool> {
    store.write_tx(|tx| {
        let n = tx.execute(
            "UPDATE outbox SET status = 'running', attempts = attempts + 1, updated_ms = ?2
             WHERE seq = ?1 AND status IN ('pending', 'running') AND attempts = ?3",
            params![a.seq, crate::store::now_ms(), a.attempts],
        )?;
        if n != 1 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO response_progress (outbox_seq) VALUES (?1) ON CONFLICT (outbox_seq) DO NOTHING",
            params![a.seq],
        )?;
        if let Some(audit) = &requested {
            write_audit(tx, a, audit)?;
        }
        Ok(true)
    })
}

/// What was recorded per account for an action.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountRow {
    pub dn: String,
    pub old_uac: Option<i64>,
    pub state: String,
}

pub fn accounts(store: &Store, seq: i64) -> Result<Vec<AccountRow>> {
    store.read(|c| {
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
    })
}

/// Records what was done to one account, with its audit record.
pub fn set_account(
    store: &Store,
    a: &Action,
    dn: &str,
    old_uac: Option<i64>,
    state: &str,
    audit: Option<Audit>,
) -> Result<()> {
    store.write_tx(|tx| {
        tx.execute(
            "INSERT INTO response_accounts (outbox_seq, dn, old_uac, state) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (outbox_seq, dn) DO UPDATE SET old_uac = coalesce(excluded.old_uac, old_uac), state = excluded.state",
            params![a.seq, dn, old_uac, state],
        )?;
        if let Some(audit) = &audit {
            write_audit(tx, a, audit)?;
        }
        Ok(())
    })
}

/// Drops what was recorded for one account of an action (a write the DC
/// refused: the next attempt starts afresh).
pub fn forget_account(store: &Store, a: &Action, dn: &str) -> Result<()> {
    store.write_tx(|tx| {
        tx.execute(
            "DELETE FROM response_accounts WHERE outbox_seq = ?1 AND dn = ?2",
            params![a.seq, dn],
        )?;
        Ok(())
    })
}

/// Ends an action (`done` with its outcome, or `failed`).
pub fn finish(
    store: &Store,
    a: &Action,
    status: &str,
    outcome: &str,
    expires_ms: Option<i64>,
    audit: Option<Audit>,
) -> Result<()> {
    store.write_tx(|tx| {
        tx.execute(
            "UPDATE outbox SET status = ?2, outcome = ?3, updated_ms = ?4 WHERE seq = ?1",
            params![a.seq, status, outcome, crate::store::now_ms()],
        )?;
        tx.execute(
            "INSERT INTO response_progress (outbox_seq, expires_ms) VALUES (?1, ?2)
             ON CONFLICT (outbox_seq) DO UPDATE SET expires_ms = excluded.expires_ms",
            params![a.seq, expires_ms],
        )?;
        if let Some(audit) = &audit {
            write_audit(tx, a, audit)?;
        }
        Ok(())
    })
}

/// Puts an action back for a retry at `next_ms`; `refused` counts it as an
/// attempt the DC refused (towards giving up), not a connection problem.
pub fn retry(
    store: &Store,
    a: &Action,
    next_ms: i64,
    refused: bool,
    error: &str,
    audit: Audit,
) -> Result<()> {
    store.write_tx(|tx| {
        tx.execute(
            "UPDATE outbox SET status = 'pending', outcome = ?2, updated_ms = ?3 WHERE seq = ?1",
            params![a.seq, format!("retrying: {error}"), crate::store::now_ms()],
        )?;
        tx.execute(
            "INSERT INTO response_progress (outbox_seq, next_attempt_ms, op_failures) VALUES (?1, ?2, ?3)
             ON CONFLICT (outbox_seq) DO UPDATE SET next_attempt_ms = excluded.next_attempt_ms,
                 op_failures = op_failures + excluded.op_failures",
            params![a.seq, next_ms, refused as i64],
        )?;
        write_audit(tx, a, &audit)
    })
}

/// A re-enable attempt failed: tried again at `next_ms` (the expiry stays
/// what it was).
pub fn reenable_retry(store: &Store, a: &Action, next_ms: i64, audit: Audit) -> Result<()> {
    store.write_tx(|tx| {
        tx.execute(
            "UPDATE response_progress SET next_attempt_ms = ?2, reenable_failures = reenable_failures + 1
             WHERE outbox_seq = ?1",
            params![a.seq, next_ms],
        )?;
        write_audit(tx, a, &audit)
    })
}

/// Another action's record of the same account (same AD target and DN).
#[derive(Debug, Clone, PartialEq)]
pub struct OtherRow {
    pub seq: i64,
    pub action_id: String,
    pub target: String,
    pub alert_id: Option<String>,
    pub status: String,
    pub expires_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    pub old_uac: Option<i64>,
    pub state: String,
}

impl OtherRow {
    /// Whether this action still wants the account disabled at `now_ms`:
    /// it found or left it disabled (or is about to), and has not ended nor
    /// reached its expiry. An action queued or retrying has no expiry yet:
    /// it gets one when it ends.
    pub fn wants_disabled(&self, now_ms: i64) -> bool {
        matches!(self.state.as_str(), "set" | "already" | "intent")
            && matches!(self.status.as_str(), "pending" | "running" | "done")
            && (self.status != "done" || self.expires_ms.is_none_or(|e| e > now_ms))
    }

    /// When it stops wanting it (None: never), for choosing the
    /// longest-living one.
    pub fn wanted_until(&self, now_ms: i64) -> Option<i64> {
        match self.status.as_str() {
            "done" => self.expires_ms,
            _ => self.duration_ms.map(|d| now_ms + d),
        }
    }
}

/// The longest-living of the actions that still want an account disabled.
pub fn heir(others: &[OtherRow], now_ms: i64) -> Option<&OtherRow> {
    others
        .iter()
        .filter(|o| o.wants_disabled(now_ms))
        // None (forever) outlives every time; then the later expiry; then
        // the later action.
        .max_by_key(|o| {
            (
                o.wanted_until(now_ms).is_none(),
                o.wanted_until(now_ms),
                o.seq,
            )
        })
}

/// The other actions' records of account `dn` of AD target `ad`.
pub fn others(store: &Store, ad: &str, dn: &str, except_seq: i64) -> Result<Vec<OtherRow>> {
    store.read(|c| {
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
    })
}

/// Moves "this product set the bit on `dn`" from action `from` to `heir`,
/// which still wants the account disabled and now re-enables it when it
/// ends; audited on `from`.
pub fn hand_over(
    store: &Store,
    from: &Action,
    dn: &str,
    old_uac: Option<i64>,
    heir: &OtherRow,
    audit: Audit,
) -> Result<()> {
    store.write_tx(|tx| {
        tx.execute(
            "UPDATE response_accounts SET state = 'handed-over' WHERE outbox_seq = ?1 AND dn = ?2",
            params![from.seq, dn],
        )?;
        tx.execute(
            "UPDATE response_accounts SET state = 'set', old_uac = coalesce(?3, old_uac)
             WHERE outbox_seq = ?1 AND dn = ?2 COLLATE NOCASE",
            params![heir.seq, dn, old_uac],
        )?;
        write_audit(tx, from, &audit)
    })
}

/// Per connector: actions by outcome, and the latest audit record.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConnectorActions {
    pub by_outcome: std::collections::BTreeMap<String, u64>,
    pub last: Option<Value>,
}

pub fn summary(store: &Store, connector: &str) -> Result<ConnectorActions> {
    let mut out = ConnectorActions::default();
    store.read(|c| {
        let mut stmt = c.prepare_cached(
            "SELECT CASE WHEN status IN ('pending', 'running') AND outcome IS NULL THEN 'queued'
                         WHEN status IN ('pending', 'running') THEN 'retrying'
                         WHEN status = 'reenabled' THEN 're-enabled'
                         WHEN status = 'failed' THEN 'failed'
                         WHEN status = 'expired' AND outcome IN ('handed-over', 're-enable-skipped') THEN outcome
                         ELSE coalesce(outcome, status) END, count(*)
             FROM outbox WHERE connector = ?1 GROUP BY 1",
        )?;
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
        Ok(())
    })?;
    Ok(out)
}
