//! The outbox worker: performs due `disable-user` actions and re-enables
//! accounts whose limited duration has passed.
//!
//! Crash safety. Every step is recorded before the next one starts:
//! claiming an action (`running`), the value of `userAccountControl` read
//! just before writing (`intent`), the write's success (`set`), the action's
//! end (`done`). A crash leaves a `running` action, which the next pass
//! resumes: accounts already finished are skipped, and an account found
//! disabled whose `intent` says it was enabled just before our write is
//! recognised as disabled by us. Writes are `old | 0x2` (and `old & !0x2` to
//! re-enable), so a repeated write changes nothing either way. Queued
//! actions are never lost: they stay in the outbox until they end.

use super::config::AdTarget;
use super::ldap::{protection, AdError, AdSession, ACCOUNTDISABLE};
use super::outbox::{self, Action, Audit};
use super::{fault_point, DISABLE_USER};
use crate::clock::Clock;
use crate::config::Config;
use crate::store::Store;
use anyhow::Result;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Retry delays after a failed attempt: 30 s doubling up to an hour.
const FIRST_RETRY_MS: i64 = 30_000;
const MAX_RETRY_MS: i64 = 3_600_000;
/// Attempts after which an action that fails for a reason other than the
/// connection (the DC refused this account's change) is given up, audited.
const MAX_OPERATION_ATTEMPTS: i64 = 5;
/// Actions taken per pass (the rest wait for the next one).
const PASS_LIMIT: usize = 1_000;

/// What one pass did, by audited state.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    pub states: BTreeMap<String, u64>,
    /// Problems that left actions waiting for a retry (or failed).
    pub errors: Vec<String>,
}

impl PassReport {
    fn count(&mut self, state: &str) {
        *self.states.entry(state.to_string()).or_default() += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty() && self.errors.is_empty()
    }

    /// `2 done, 1 skipped-protected`.
    pub fn describe(&self) -> String {
        self.states
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

type Sessions = HashMap<String, Result<AdSession, AdError>>;

pub struct Worker {
    config: Arc<Config>,
    store: Arc<Store>,
    clock: Clock,
}

/// The action's parameters, as the component queued them.
struct Params {
    ad: String,
    dry_run: bool,
    duration_ms: Option<i64>,
    alert_id: Value,
    alert_type: Value,
}

impl Params {
    fn of(a: &Action) -> Params {
        let p = &a.params;
        Params {
            ad: p["ad"].as_str().unwrap_or_default().to_string(),
            dry_run: p["dry_run"].as_bool().unwrap_or(false),
            duration_ms: p["duration_ms"].as_i64().filter(|d| *d > 0),
            alert_id: p["alert_id"].clone(),
            alert_type: p["alert_type"].clone(),
        }
    }
}

impl Worker {
    pub fn new(config: Arc<Config>, store: Arc<Store>) -> Result<Worker> {
        outbox::ensure_schema(&store)?;
        let clock = config.host.clock();
        Ok(Worker {
            config,
            store,
            clock,
        })
    }

    /// Runs passes until the task is dropped, every `every`.
    pub async fn run_forever(self, every: Duration) {
        loop {
            match self.pass().await {
                Ok(r) if !r.is_empty() => {
                    tracing::info!("response actions: {}", r.describe());
                    for e in &r.errors {
                        tracing::warn!("response action: {e}");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!("response actions: {e:#}"),
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Performs every due action and every due re-enable once.
    pub async fn pass(&self) -> Result<PassReport> {
        let now = self.clock.now_ms()?;
        let mut report = PassReport::default();
        // One session per AD target per pass; a target that cannot be
        // reached is tried once per pass, not once per action.
        let mut sessions: Sessions = HashMap::new();
        for a in outbox::due(&self.store, now, PASS_LIMIT)? {
            self.perform(&a, now, &mut sessions, &mut report).await?;
        }
        for a in outbox::expired(&self.store, now, PASS_LIMIT)? {
            self.reenable(&a, &mut sessions, &mut report).await?;
        }
        for s in sessions.into_values().flatten() {
            s.close().await;
        }
        Ok(report)
    }

    fn target(&self, name: &str) -> Option<&AdTarget> {
        self.config.ad.iter().find(|t| t.name == name)
    }

    /// The audit record of a state change.
    fn audit(&self, a: &Action, state: &str, message: String, extra: Value) -> Audit {
        let p = Params::of(a);
        let now = self
            .clock
            .now_ms()
            .unwrap_or_else(|_| crate::store::now_ms());
        let mut body = json!({
            "msg_class": "dphost_action",
            "timestamp": now,
            "event_type": state,
            "tenant_name": a.tenant,
            "connector": a.connector,
            "action": {
                "id": a.action_id,
                "kind": a.kind,
                "state": state,
                "target": a.target,
                "ad": p.ad,
                "dry_run": p.dry_run,
                "duration_ms": p.duration_ms,
                "attempt": a.attempts + 1,
            },
            "alert": { "id": p.alert_id, "type": p.alert_type },
            "reason": a.reason,
            "email": { "recipient": { "address": a.target } },
            "message": message,
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        Audit { body }
    }

    async fn session<'s>(
        &self,
        target: &AdTarget,
        sessions: &'s mut Sessions,
    ) -> Result<&'s mut AdSession, AdError> {
        if !sessions.contains_key(&target.name) {
            let s = AdSession::connect(target).await;
            sessions.insert(target.name.clone(), s);
        }
        match sessions.get_mut(&target.name).expect("inserted") {
            Ok(s) => Ok(s),
            Err(e) => Err(e.clone()),
        }
    }

    async fn perform(
        &self,
        a: &Action,
        now: i64,
        sessions: &mut Sessions,
        report: &mut PassReport,
    ) -> Result<()> {
        if a.kind != DISABLE_USER {
            report.count("failed");
            let msg = format!(
                "unknown action kind `{}`: this host performs only `{DISABLE_USER}`",
                a.kind
            );
            let audit = self.audit(a, "failed", msg.clone(), json!({}));
            report.errors.push(msg.clone());
            return outbox::finish(&self.store, a, "failed", &msg, None, Some(audit));
        }
        let p = Params::of(a);
        let requested = (a.attempts == 0).then(|| {
            report.count("requested");
            let mut audit = self.audit(
                a,
                "requested",
                format!(
                    "disable the account(s) of {} in [[ad]] `{}`{}{}",
                    a.target,
                    p.ad,
                    match p.duration_ms {
                        Some(ms) => format!(" for {}", human_ms(ms)),
                        None => String::new(),
                    },
                    if p.dry_run { " (dry run)" } else { "" }
                ),
                json!({}),
            );
            // The request happened when the alert was committed.
            audit.body["timestamp"] = a.created_ms.into();
            audit.body["action"]["attempt"] = 0.into();
            audit
        });
        outbox::claim(&self.store, a, requested)?;
        let Some(target) = self.target(&p.ad) else {
            report.count("failed");
            let msg = format!(
                "the action names [[ad]] `{}`, which is not configured: add it to the configuration (the action stays failed)",
                p.ad
            );
            report.errors.push(msg.clone());
            let audit = self.audit(a, "failed", msg.clone(), json!({}));
            return outbox::finish(&self.store, a, "failed", &msg, None, Some(audit));
        };
        let result = match self.session(target, sessions).await {
            Ok(session) => self.disable(a, &p, now, session, report).await,
            Err(e) => Err(e),
        };
        let Err(e) = result else { return Ok(()) };
        // A session that broke is opened again by the next action; a target
        // that could not be reached stays so for the rest of this pass.
        if e.is_connection() && matches!(sessions.get(&target.name), Some(Ok(_))) {
            sessions.remove(&target.name);
        }
        let attempts = a.attempts + 1;
        let msg = e.to_string();
        report
            .errors
            .push(format!("{} ({}): {msg}", a.target, a.connector));
        if !e.is_connection() && attempts >= MAX_OPERATION_ATTEMPTS {
            report.count("failed");
            let audit = self.audit(
                a,
                "failed",
                format!("{msg}; given up after {attempts} attempts"),
                json!({ "error": msg }),
            );
            return outbox::finish(&self.store, a, "failed", &msg, None, Some(audit));
        }
        let delay = (FIRST_RETRY_MS << (attempts - 1).clamp(0, 20)).min(MAX_RETRY_MS);
        report.count("failed");
        let audit = self.audit(
            a,
            "failed",
            format!("{msg}; retrying in {}", human_ms(delay)),
            json!({ "error": msg, "retry_at": now + delay }),
        );
        outbox::retry(&self.store, a, now + delay, &msg, audit)
    }

    async fn disable(
        &self,
        a: &Action,
        p: &Params,
        now: i64,
        session: &mut AdSession,
        report: &mut PassReport,
    ) -> Result<(), AdError> {
        let store_err = |e: anyhow::Error| AdError::Operation(format!("the store failed: {e:#}"));
        let known: HashMap<String, outbox::AccountRow> = outbox::accounts(&self.store, a.seq)
            .map_err(store_err)?
            .into_iter()
            .map(|r| (r.dn.clone(), r))
            .collect();
        let mut dns = session.find_accounts(&a.target).await?;
        // An account a crashed attempt was writing is finished even if the
        // search no longer finds it by this address.
        for dn in known.keys() {
            if !dns.contains(dn) {
                dns.push(dn.clone());
            }
        }
        if dns.is_empty() {
            report.count("not-found");
            let audit = self.audit(
                a,
                "not-found",
                format!(
                    "no user account has mail, userPrincipalName or proxyAddresses {}",
                    a.target
                ),
                json!({}),
            );
            return outbox::finish(&self.store, a, "done", "not-found", None, Some(audit))
                .map_err(store_err);
        }
        for dn in &dns {
            let row = known.get(dn);
            if row.is_some_and(|r| r.state != "intent") {
                continue;
            }
            let Some(account) = session.read_account(dn).await? else {
                report.count("not-found");
                let audit = self.audit(
                    a,
                    "not-found",
                    format!("{dn} no longer exists"),
                    json!({ "user": { "dn": dn } }),
                );
                outbox::set_account(&self.store, a, dn, None, "gone", Some(audit))
                    .map_err(store_err)?;
                continue;
            };
            let uac = account.user_account_control;
            let user = |after: i64| {
                json!({ "user": {
                    "dn": account.dn,
                    "name": account.sam_account_name,
                    "user_account_control": { "before": uac, "after": after },
                }})
            };
            if let Some(why) = protection(&account, &session.guard) {
                report.count("skipped-protected");
                let audit = self.audit(
                    a,
                    "skipped-protected",
                    format!("{} was not disabled: {why}", account.dn),
                    user(uac),
                );
                outbox::set_account(&self.store, a, dn, Some(uac), "protected", Some(audit))
                    .map_err(store_err)?;
                continue;
            }
            if uac & ACCOUNTDISABLE != 0 {
                // Disabled already: by us if an interrupted attempt recorded
                // the account enabled just before its write.
                let ours = row
                    .and_then(|r| r.old_uac)
                    .is_some_and(|old| old & ACCOUNTDISABLE == 0);
                let (state, row_state, msg, before) = if ours {
                    let old = row.and_then(|r| r.old_uac).unwrap_or(uac);
                    (
                        "done",
                        "set",
                        format!(
                            "{} disabled (userAccountControl {old} -> {uac}; the write of an interrupted attempt, confirmed)",
                            account.dn
                        ),
                        old,
                    )
                } else {
                    (
                        "already-disabled",
                        "already",
                        format!("{} was already disabled: nothing changed", account.dn),
                        uac,
                    )
                };
                report.count(state);
                let mut extra = user(uac);
                extra["user"]["user_account_control"]["before"] = before.into();
                let audit = self.audit(a, state, msg, extra);
                outbox::set_account(&self.store, a, dn, Some(before), row_state, Some(audit))
                    .map_err(store_err)?;
                continue;
            }
            let new = uac | ACCOUNTDISABLE;
            if p.dry_run {
                report.count("dry-run");
                let audit = self.audit(
                    a,
                    "dry-run",
                    format!(
                        "dry run: would disable {} (userAccountControl {uac} -> {new})",
                        account.dn
                    ),
                    user(new),
                );
                outbox::set_account(&self.store, a, dn, Some(uac), "would-set", Some(audit))
                    .map_err(store_err)?;
                continue;
            }
            outbox::set_account(&self.store, a, dn, Some(uac), "intent", None)
                .map_err(store_err)?;
            fault_point("before-modify");
            session.write_uac(dn, new).await?;
            fault_point("after-modify");
            report.count("done");
            let audit = self.audit(
                a,
                "done",
                format!(
                    "{} disabled (userAccountControl {uac} -> {new})",
                    account.dn
                ),
                user(new),
            );
            outbox::set_account(&self.store, a, dn, Some(uac), "set", Some(audit))
                .map_err(store_err)?;
        }
        // The action's outcome, from every account's.
        let rows = outbox::accounts(&self.store, a.seq).map_err(store_err)?;
        let has = |s: &str| rows.iter().any(|r| r.state == s);
        let outcome = if has("set") {
            "done"
        } else if has("would-set") {
            "dry-run"
        } else if has("already") {
            "already-disabled"
        } else if has("protected") {
            "skipped-protected"
        } else {
            "not-found"
        };
        let expires = if has("set") {
            p.duration_ms.map(|d| now + d)
        } else {
            None
        };
        outbox::finish(&self.store, a, "done", outcome, expires, None).map_err(store_err)
    }

    async fn reenable(
        &self,
        a: &Action,
        sessions: &mut Sessions,
        report: &mut PassReport,
    ) -> Result<()> {
        let p = Params::of(a);
        let Some(target) = self.target(&p.ad) else {
            report.errors.push(format!(
                "cannot re-enable the accounts of {}: [[ad]] `{}` is no longer configured",
                a.target, p.ad
            ));
            return Ok(());
        };
        let result: Result<(), AdError> = async {
            let session = self.session(target, sessions).await?;
            for row in outbox::accounts(&self.store, a.seq)
                .map_err(|e| AdError::Operation(format!("{e:#}")))?
            {
                // Only what this product set, and only if it set it.
                if row.state != "set" {
                    continue;
                }
                let Some(account) = session.read_account(&row.dn).await? else {
                    continue;
                };
                let uac = account.user_account_control;
                let (msg, after) = if uac & ACCOUNTDISABLE != 0 {
                    let new = uac & !ACCOUNTDISABLE;
                    session.write_uac(&row.dn, new).await?;
                    (
                        format!(
                            "{} re-enabled at the end of its {} (userAccountControl {uac} -> {new})",
                            row.dn,
                            human_ms(p.duration_ms.unwrap_or(0))
                        ),
                        new,
                    )
                } else {
                    (
                        format!(
                            "{} was enabled again by someone else before expiry: nothing changed",
                            row.dn
                        ),
                        uac,
                    )
                };
                report.count("re-enabled");
                let audit = self.audit(
                    a,
                    "re-enabled",
                    msg,
                    json!({ "user": { "dn": row.dn, "name": account.sam_account_name,
                        "user_account_control": { "before": uac, "after": after } } }),
                );
                outbox::set_account(&self.store, a, &row.dn, row.old_uac, "reenabled", Some(audit))
                    .map_err(|e| AdError::Operation(format!("{e:#}")))?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => outbox::finish(&self.store, a, "reenabled", "re-enabled", None, None),
            Err(e) => {
                if e.is_connection() && matches!(sessions.get(&target.name), Some(Ok(_))) {
                    sessions.remove(&target.name);
                }
                // Tried again on the next pass: the action stays due.
                report.errors.push(format!("re-enabling {}: {e}", a.target));
                Ok(())
            }
        }
    }
}

/// `4h`, `30m`, `90s`.
fn human_ms(ms: i64) -> String {
    match ms {
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms => format!("{}s", ms / 1000),
    }
}
