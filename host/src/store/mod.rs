//! The data store: per connector instance, its state keys, the Syslog /
//! Alerts / Quarantine / Actions indexes, the action outbox and the response
//! tables, the request budgets, the run history, the forwarding cursors and
//! the connector identities.
//!
//! `Backend` is the interface; `sqlite` (the default: one file under
//! `data_dir`) and `postgres` (`[host] store = "postgres://..."`, shared by
//! several hosts) implement it with the same schema and semantics. Every
//! `sink.commit` is one transaction, so a checkpoint moves only together
//! with the records it covers, and a crash at any point leaves either all of
//! a batch or none of it.
//!
//! The interface is synchronous and speaks the domain (commit a batch, claim
//! an action), never SQL: SQLite is synchronous, and its hot paths (a commit
//! per batch, state lookups from host functions) are benchmarked as they
//! are. Callers on async threads that may write much use `spawn_blocking`.

mod postgres;
mod sqlite;

pub use postgres::{
    parse_url as parse_postgres_url, redacted as redacted_postgres_url, PgOptions, PgStore,
};
pub use sqlite::SqliteStore;

/// What an operator should do about a store call that failed.
pub fn storage_advice(e: &anyhow::Error) -> &'static str {
    storage_fault_advice(e).unwrap_or("check the data dir's free space and permissions")
}

/// Advice when `e` comes from where the data lives (the data dir's file
/// system, the PostgreSQL server), not from dphost itself.
pub fn storage_fault_advice(e: &anyhow::Error) -> Option<&'static str> {
    sqlite::fault_advice(e).or_else(|| postgres::advice(e))
}

use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;

/// The indexes of the data lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Index {
    Syslog,
    Alerts,
    Quarantine,
    /// The audit trail of response actions, written by the host only.
    Actions,
}

impl Index {
    pub const ALL: [Index; 4] = [
        Index::Syslog,
        Index::Alerts,
        Index::Quarantine,
        Index::Actions,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Index::Syslog => "syslog",
            Index::Alerts => "alerts",
            Index::Quarantine => "quarantine",
            Index::Actions => "actions",
        }
    }

    pub fn parse(s: &str) -> Result<Index> {
        Index::ALL
            .into_iter()
            .find(|i| i.as_str() == s)
            .with_context(|| {
                format!("unknown index `{s}`: use syslog, alerts, quarantine or actions")
            })
    }
}

/// How a record is written when its id is already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Keep the stored record (the new one is a duplicate).
    Insert,
    /// Replace the stored body.
    Upsert,
}

#[derive(Debug, Clone)]
pub struct NewRecord {
    pub index: Index,
    pub id: String,
    pub body: String,
    pub mode: WriteMode,
}

#[derive(Debug, Clone)]
pub struct NewAction {
    pub id: String,
    pub kind: String,
    pub target: String,
    pub reason: String,
    pub params: String,
}

/// One atomic commit from a connector run.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub records: Vec<NewRecord>,
    pub actions: Vec<NewAction>,
    /// `None` deletes the key.
    pub state: Vec<(String, Option<Vec<u8>>)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    pub written: u32,
    pub duplicates: u32,
    pub actions_queued: u32,
}

/// Who a commit belongs to: the host fills this in, never the component.
#[derive(Debug, Clone)]
pub struct Owner {
    pub connector: String,
    pub tenant: String,
    /// The connector lease the committing host holds (several hosts on one
    /// PostgreSQL store); None: this process owns the store alone.
    pub fence: Option<Fence>,
}

/// A connector lease as its holder knows it: the commit goes through only
/// if the store still names this host with this token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub host: String,
    pub token: i64,
}

/// A commit refused because its host no longer holds the connector's
/// lease: another host took the connector over (this one was paused or cut
/// off past the lease). Nothing of the batch was written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("this host ({host}) no longer holds the lease of connector `{connector}` (fencing token {token}; now {}): nothing of the batch was written; the holder collects it from the last checkpoint", match holder { Some((h, t)) => format!("held by {h} with token {t}"), None => "free".to_string() })]
pub struct LeaseLost {
    pub connector: String,
    pub host: String,
    pub token: i64,
    pub holder: Option<(String, i64)>,
}

impl LeaseLost {
    /// The refusal in `e`'s chain, if any.
    pub fn find(e: &anyhow::Error) -> Option<&LeaseLost> {
        e.chain().find_map(|c| c.downcast_ref::<LeaseLost>())
    }
}

/// What one lease round (`Backend::lease_round`) asks for.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// This host's name.
    pub host: String,
    /// The connectors it may run (its configuration's, enabled).
    pub connectors: Vec<String>,
    /// Connectors running now: never released for balance.
    pub running: Vec<String>,
    pub ttl_ms: i64,
    /// Take every free connector, not only a fair share (`dphost once`).
    pub greedy: bool,
    /// Only announce this host and renew: a host's first round, so that
    /// hosts started together see each other before they take shares.
    pub join_only: bool,
}

/// What a lease round leaves this host with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaseRound {
    /// connector -> fencing token, for every lease this host holds.
    pub held: std::collections::BTreeMap<String, i64>,
    /// Hosts alive (this one included).
    pub hosts: usize,
    /// The most connectors this host takes while the others have room.
    pub share: usize,
}

/// One connector's lease, for status and metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LeaseInfo {
    pub connector: String,
    pub owner: Option<String>,
    pub token: i64,
    /// Until when (epoch ms, the store's clock).
    pub expires_ms: i64,
    /// The store's clock when this was read.
    pub now_ms: i64,
}

/// A stored record as search returns it.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub seq: i64,
    pub index: String,
    pub connector: String,
    pub tenant: String,
    pub id: String,
    pub body: String,
}

/// Fields with an expression index: (dotted path, JSON path).
pub const INDEXED_FIELDS: [(&str, &str); 3] = [
    ("msg_class", "$.msg_class"),
    ("event_type", "$.event_type"),
    ("email.sender.address", "$.email.sender.address"),
];

/// What a scan may skip in SQL before the exact match.
#[derive(Debug, Clone, Default)]
pub struct ScanFilter {
    pub tenant: Option<String>,
    /// Case-insensitive equality on `INDEXED_FIELDS` (scalar values only).
    pub equals: Vec<(String, String)>,
    /// Bounds on the record's `timestamp` (epoch ms), `[since, until)`.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Substrings the body must contain (ASCII, case-insensitive).
    pub must_contain: Vec<String>,
}

/// How a run ended, as kept in the run history.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub connector: String,
    pub tenant: String,
    pub operation: String,
    pub started_ms: i64,
    pub ended_ms: i64,
    pub outcome: String,
    pub summary: Option<String>,
    pub error: Option<String>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Who a connector name belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub connector: String,
    pub tenant: String,
    pub component: String,
}

/// A configured connector whose tenant or component differs from the one
/// its data is kept under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConflict {
    pub connector: String,
    /// `tenant` or `component`.
    pub key: &'static str,
    pub kept: String,
    pub configured: String,
    pub since_ms: i64,
}

/// A record as the forwarder ships it.
#[derive(Debug, Clone)]
pub struct ForwardRecord {
    pub change_seq: i64,
    pub index: Index,
    pub connector: String,
    pub tenant: String,
    pub id: String,
    pub body: String,
    pub written_ms: i64,
}

/// One output's position in one index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardPosition {
    pub index: Index,
    /// The last change the destination accepted (0: nothing yet).
    pub cursor: i64,
    /// Records changed after the cursor: not delivered yet.
    pub pending: u64,
    /// When the oldest pending change was written (epoch ms).
    pub oldest_pending_ms: Option<i64>,
}

/// What an output has done so far, as kept in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardActivity {
    pub delivered: u64,
    pub last_delivery_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
}

/// One audit record for the Actions index, written in the same transaction
/// as the state change it reports.
#[derive(Clone)]
pub struct Audit {
    pub body: Value,
}

/// An outbox row the response worker acts on.
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

/// What was recorded per account for an action.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountRow {
    pub dn: String,
    pub old_uac: Option<i64>,
    pub state: String,
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

/// Per connector: actions by outcome, and the latest audit record.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConnectorActions {
    pub by_outcome: std::collections::BTreeMap<String, u64>,
    pub last: Option<Value>,
}

/// Who holds the response worker's lease, when it is not the asker.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseHolder {
    /// The holder as it stored itself (JSON of `response::lease::Owner`).
    pub owner: String,
    /// Until when (epoch ms, the store's clock).
    pub until_ms: i64,
}

/// The storage backend: everything the host keeps, in domain terms.
///
/// Implementations keep the same schema and semantics: a `commit` is one
/// transaction; an id is stored once per (connector, index); `change_seq`
/// grows in commit order (forwarding relies on it); each outbox write goes
/// with its audit record in one transaction.
pub trait Backend: Send + Sync {
    /// `SQLite data/dphost.db`, or the PostgreSQL URL without its password:
    /// for messages.
    fn describe(&self) -> String;

    fn state_get(&self, connector: &str, key: &str) -> Result<Option<Vec<u8>>>;
    /// Applies a whole batch in one transaction: all of it or none of it.
    fn commit(&self, owner: &Owner, batch: &Batch) -> Result<CommitOutcome>;
    /// For each id, whether it is stored in `index` for `connector`.
    fn contains(&self, connector: &str, index: Index, ids: &[String]) -> Result<Vec<bool>>;
    /// Streams the records of `index` that pass `filter`, in commit order,
    /// until `visit` returns false. The filter narrows the scan in SQL
    /// (indexes, then a substring prefilter); the caller matches exactly.
    fn scan(
        &self,
        index: Index,
        filter: &ScanFilter,
        visit: &mut dyn FnMut(StoredRecord) -> Result<bool>,
    ) -> Result<()>;
    /// Number of records in `index` for `connector` (all connectors if None).
    fn count(&self, index: Index, connector: Option<&str>) -> Result<u64>;

    fn record_run(&self, run: &RunRecord) -> Result<()>;
    /// The last successful collection of `connector`, however old.
    fn last_ok_collect(&self, connector: &str) -> Result<Option<RunRecord>>;
    /// The newest run of `connector` whose operation is one of `operations`,
    /// however many runs of other operations came after it.
    fn newest_run(&self, connector: &str, operations: &[&str]) -> Result<Option<RunRecord>>;
    /// Records when the scheduler next starts `connector`.
    fn set_next_run(&self, connector: &str, next_run_ms: i64) -> Result<()>;
    fn next_run(&self, connector: &str) -> Result<Option<i64>>;

    /// Takes one request from `pool` (a rolling window of `window_ms`) if
    /// fewer than `limit` are in it at `now_ms`, atomically. Ok: requests
    /// left. Err: when (epoch ms) the oldest counted request leaves the
    /// window.
    fn budget_take(
        &self,
        pool: &str,
        limit: u32,
        window_ms: i64,
        now_ms: i64,
    ) -> Result<Result<u32, i64>>;
    /// Requests left in `pool` at `now_ms`.
    fn budget_remaining(&self, pool: &str, limit: u32, window_ms: i64, now_ms: i64) -> Result<u32>;
    /// Requests taken per rate-limit pool since `since_ms`.
    fn budget_used(&self, since_ms: i64) -> Result<Vec<(String, i64)>>;

    /// Compares each configured connector with the identity the store keeps
    /// for its name. With `claim`, and only if nothing conflicts, names not
    /// seen before are recorded (and a component unknown since the upgrade
    /// is filled in), in one transaction, so two processes starting at once
    /// cannot record different identities.
    fn check_identities(&self, wanted: &[Identity], claim: bool) -> Result<Vec<IdentityConflict>>;

    /// The output's cursor in `index` (0 if it never delivered anything).
    fn forward_cursor(&self, output: &str, index: Index) -> Result<i64>;
    /// Up to `limit` records of `index` changed after `after`, in change order.
    fn forward_after(&self, index: Index, after: i64, limit: usize) -> Result<Vec<ForwardRecord>>;
    /// Moves the output's cursors (after the destination accepted the
    /// records up to them) and counts the delivery, in one transaction.
    fn forward_advance(&self, output: &str, cursors: &[(Index, i64)], delivered: u64)
        -> Result<()>;
    /// Keeps the output's last error (`None` clears it after a recovery).
    fn forward_error(&self, output: &str, error: Option<&str>) -> Result<()>;
    /// Where the output stands in `index`: cursor and what is left to send.
    fn forward_position(&self, output: &str, index: Index) -> Result<ForwardPosition>;
    /// What the output delivered so far and its last error.
    fn forward_activity(&self, output: &str) -> Result<ForwardActivity>;

    /// Actions to perform now: queued, waiting for a retry that is due, or
    /// claimed by a pass that never finished (a crash).
    fn outbox_due(&self, now_ms: i64, limit: usize) -> Result<Vec<Action>>;
    /// Ended actions whose accounts are due to be re-enabled (and whose last
    /// failed re-enable attempt, if any, has waited its backoff).
    fn outbox_expired(&self, now_ms: i64, limit: usize) -> Result<Vec<Action>>;
    /// Claims an action (`running`, one more attempt) if it is still as `a`
    /// was read; with the `requested` audit of a first claim. False: claimed
    /// or ended by another pass meanwhile, nothing changed.
    fn outbox_claim(&self, a: &Action, requested: Option<&Audit>) -> Result<bool>;
    fn outbox_accounts(&self, seq: i64) -> Result<Vec<AccountRow>>;
    /// Records what was done to one account, with its audit record.
    fn outbox_set_account(
        &self,
        a: &Action,
        dn: &str,
        old_uac: Option<i64>,
        state: &str,
        audit: Option<&Audit>,
    ) -> Result<()>;
    /// Drops what was recorded for one account of an action.
    fn outbox_forget_account(&self, a: &Action, dn: &str) -> Result<()>;
    /// Ends an action (`done` with its outcome, or `failed`).
    fn outbox_finish(
        &self,
        a: &Action,
        status: &str,
        outcome: &str,
        expires_ms: Option<i64>,
        audit: Option<&Audit>,
    ) -> Result<()>;
    /// Puts an action back for a retry at `next_ms`; `refused` counts it
    /// towards giving up.
    fn outbox_retry(
        &self,
        a: &Action,
        next_ms: i64,
        refused: bool,
        error: &str,
        audit: &Audit,
    ) -> Result<()>;
    /// A re-enable attempt failed: tried again at `next_ms`.
    fn outbox_reenable_retry(&self, a: &Action, next_ms: i64, audit: &Audit) -> Result<()>;
    /// The other actions' records of account `dn` (case-insensitive) of AD
    /// target `ad`.
    fn outbox_others(&self, ad: &str, dn: &str, except_seq: i64) -> Result<Vec<OtherRow>>;
    /// Moves "this product set the bit on `dn`" from `from` to `heir`.
    fn outbox_hand_over(
        &self,
        from: &Action,
        dn: &str,
        old_uac: Option<i64>,
        heir_seq: i64,
        audit: &Audit,
    ) -> Result<()>;
    /// Per connector: actions by outcome, and the latest audit record.
    fn outbox_summary(&self, connector: &str) -> Result<ConnectorActions>;

    /// Takes the response worker's lease for `ttl_ms` (of the store's
    /// clock), or renews it: free, expired, ours, or held by exactly
    /// `replacing` (a holder the caller found dead) -> ours (None). Else
    /// who holds it. One transaction: two callers cannot both succeed.
    fn response_lease_take(
        &self,
        me: &str,
        ttl_ms: i64,
        replacing: Option<&str>,
    ) -> Result<Option<LeaseHolder>>;
    /// Gives the lease back if `me` holds it.
    fn response_lease_release(&self, me: &str) -> Result<()>;

    /// Whether several hosts may share this store (connector leases and
    /// fencing apply).
    fn shared(&self) -> bool;
    /// One round of the connector leases of `req.host`, in one transaction:
    /// heartbeat; renew what it holds; give back leases of connectors it no
    /// longer runs and, not running, those past its fair share; take free
    /// or expired ones (`FOR UPDATE SKIP LOCKED`) up to its share, and any
    /// left free for a whole lease time. Every new holder gets a new
    /// fencing token.
    fn lease_round(&self, req: &LeaseRequest) -> Result<LeaseRound>;
    /// Gives back every lease `host` holds (a clean stop).
    fn lease_release_all(&self, host: &str) -> Result<()>;
    /// Every connector lease.
    fn leases(&self) -> Result<Vec<LeaseInfo>>;
}

/// The store a host uses: a `Backend` behind one handle.
pub struct Store {
    backend: Box<dyn Backend>,
}

impl std::ops::Deref for Store {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
}

impl Store {
    /// The embedded SQLite store in `data_dir` (created if needed).
    pub fn open(data_dir: &Path) -> Result<Store> {
        Ok(Store {
            backend: Box::new(SqliteStore::open(data_dir)?),
        })
    }

    /// The store `[host]` names: `store = "postgres://..."`, else SQLite
    /// in `data_dir`.
    pub fn for_host(host: &crate::config::HostConfig) -> Result<Store> {
        match host.postgres()? {
            Some(options) => Store::postgres(&options),
            None => Store::open(&host.data_dir),
        }
    }

    /// A PostgreSQL database (migrated to this build's schema).
    pub fn postgres(options: &PgOptions) -> Result<Store> {
        Ok(Store {
            backend: Box::new(PgStore::open(options)?),
        })
    }

    /// The typed refusal inside `e`, if a commit was fenced off.
    pub fn lease_lost(e: &anyhow::Error) -> Option<&LeaseLost> {
        LeaseLost::find(e)
    }

    /// `scan` with a closure.
    pub fn scan(
        &self,
        index: Index,
        filter: &ScanFilter,
        mut visit: impl FnMut(StoredRecord) -> Result<bool>,
    ) -> Result<()> {
        self.backend.scan(index, filter, &mut visit)
    }
}
