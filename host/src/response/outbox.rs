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
//! The SQL lives in the store's backends (`crate::store::Backend`); this
//! module keeps the policy around it.
//!
//! Every state change is one transaction together with its audit record in
//! the Actions index, so the audit never tells more or less than happened.
//!
//! Outbox `status`: `pending` (queued or waiting for a retry) -> `running`
//! (claimed; a crash leaves it so and the next pass resumes it) -> `done`
//! (`outcome` says how) or `failed`; at expiry `done` -> `reenabled` (it
//! re-enabled an account) or `expired` (nothing to re-enable: handed over,
//! already enabled again, or not ours).

use crate::store::Store;
use anyhow::Result;

pub use crate::store::{AccountRow, Action, Audit, ConnectorActions, OtherRow};

/// Actions to perform now: queued, waiting for a retry that is due, or
/// claimed by a run that never finished (a crash).
pub fn due(store: &Store, now_ms: i64, limit: usize) -> Result<Vec<Action>> {
    store.outbox_due(now_ms, limit)
}

/// Ended actions whose accounts are due to be re-enabled (and whose last
/// failed re-enable attempt, if any, has waited its backoff). A `failed`
/// action may have disabled some of its accounts before it gave up.
pub fn expired(store: &Store, now_ms: i64, limit: usize) -> Result<Vec<Action>> {
    store.outbox_expired(now_ms, limit)
}

/// Claims an action for this pass; the first claim audits `requested`.
/// False if the action is no longer as `a` was read (another pass claimed
/// or ended it meanwhile): then nothing is changed and the caller skips it.
pub fn claim(store: &Store, a: &Action, requested: Option<Audit>) -> Result<bool> {
    store.outbox_claim(a, requested.as_ref())
}

pub fn accounts(store: &Store, seq: i64) -> Result<Vec<AccountRow>> {
    store.outbox_accounts(seq)
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
    store.outbox_set_account(a, dn, old_uac, state, audit.as_ref())
}

/// Drops what was recorded for one account of an action (a write the DC
/// refused: the next attempt starts afresh).
pub fn forget_account(store: &Store, a: &Action, dn: &str) -> Result<()> {
    store.outbox_forget_account(a, dn)
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
    store.outbox_finish(a, status, outcome, expires_ms, audit.as_ref())
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
    store.outbox_retry(a, next_ms, refused, error, &audit)
}

/// A re-enable attempt failed: tried again at `next_ms` (the expiry stays
/// what it was).
pub fn reenable_retry(store: &Store, a: &Action, next_ms: i64, audit: Audit) -> Result<()> {
    store.outbox_reenable_retry(a, next_ms, &audit)
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
    store.outbox_others(ad, dn, except_seq)
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
    store.outbox_hand_over(from, dn, old_uac, heir.seq, &audit)
}

/// Per connector: actions by outcome, and the latest audit record.
pub fn summary(store: &Store, connector: &str) -> Result<ConnectorActions> {
    store.outbox_summary(connector)
}
