//! The outbox worker: performs due `disable-user` actions and re-enables
//! accounts whose limited duration has passed.
//!
//! One worker per store: a pass first takes the store's lease (`lease`) and
//! renews it before each action and each write to the directory; without it
//! the pass does nothing. Claims are conditional too (the row must still be
//! as it was read), so an action is never performed by two passes.
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
//!
//! Overlapping actions. An account stays disabled while any of our actions
//! wants it so: an action that set the bit and expires while another (a
//! later alert, or "forever") still wants the account disabled hands the
//! "we set it" fact over to the longest-living of them instead of
//! re-enabling; the last one re-enables it, and only if we set the bit.

use super::config::AdTarget;
use super::ldap::{verdict, AdError, AdSession, Verdict, ACCOUNTDISABLE};
use super::lease::{self, Lease, Owner};
use super::outbox::{self, Action, Audit};
use super::{fault_point, test_action_delay, DISABLE_USER};
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
/// Attempts the DC refuses (it answered, with an error about this account's
/// change) after which an action is given up, audited. Connection problems
/// and guardrails that cannot be checked are retried for as long as it takes.
const MAX_OPERATION_ATTEMPTS: i64 = 5;
/// Actions taken per pass (the rest wait for the next one).
const PASS_LIMIT: usize = 1_000;
/// The shortest lease; it also outlives one LDAP operation twice over
/// (`timeout_secs`), since it is renewed just before each write.
const MIN_LEASE_MS: i64 = 120_000;

/// What one pass did, by audited state.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    pub states: BTreeMap<String, u64>,
    /// Problems that left actions waiting for a retry (or failed).
    pub errors: Vec<String>,
    /// Why this pass did nothing or stopped early (another process holds
    /// the lease): not a problem.
    pub note: Option<String>,
}

impl PassReport {
    fn count(&mut self, state: &str) {
        *self.states.entry(state.to_string()).or_default() += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty() && self.errors.is_empty() && self.note.is_none()
    }

    /// `2 done, 1 skipped-protected`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .states
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        parts.extend(self.note.clone());
        parts.join(", ")
    }
}

type Sessions = HashMap<String, Result<AdSession, AdError>>;

/// Why an action's step did not complete.
enum Fail {
    Ad(AdError),
    /// Another process took the lease: leave the rest to it.
    LeaseLost(String),
    /// The store failed: the pass ends with this error; the action stays
    /// claimed and is resumed by the next pass.
    Store(anyhow::Error),
}

impl From<AdError> for Fail {
    fn from(e: AdError) -> Fail {
        Fail::Ad(e)
    }
}

impl From<anyhow::Error> for Fail {
    fn from(e: anyhow::Error) -> Fail {
        Fail::Store(e)
    }
}

/// Whether the pass goes on after an action.
#[derive(PartialEq)]
enum Flow {
    Continue,
    Stop,
}

pub struct Worker {
    config: Arc<Config>,
    store: Arc<Store>,
    clock: Clock,
    me: Owner,
    lease_ms: i64,
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

/// After a failed attempt: None = give up, Some(delay) = retry then.
/// Only attempts the DC refused count towards giving up, so connection
/// retries before never make the first refusal the last attempt.
pub fn after_failure(attempts: i64, op_failures: i64, refused: bool) -> Option<i64> {
    if refused && op_failures >= MAX_OPERATION_ATTEMPTS {
        return None;
    }
    Some(backoff_ms(attempts))
}

/// 30 s after the first failure, doubling, at most an hour.
fn backoff_ms(failures: i64) -> i64 {
    (FIRST_RETRY_MS << (failures - 1).clamp(0, 20)).min(MAX_RETRY_MS)
}

impl Worker {
    pub fn new(config: Arc<Config>, store: Arc<Store>) -> Result<Worker> {
        let clock = config.host.clock();
        let longest_op_ms = config
            .ad
            .iter()
            .map(|t| t.timeout_secs as i64 * 1000)
            .max()
            .unwrap_or(0);
        Ok(Worker {
            config,
            store,
            clock,
            me: Owner::this_process(),
            lease_ms: MIN_LEASE_MS.max(2 * longest_op_ms + 60_000),
        })
    }

    /// Runs passes until the task is dropped, every `every`.
    pub async fn run_forever(self, every: Duration) {
        let mut last_note = None;
        loop {
            match self.pass().await {
                Ok(r) => {
                    // Said once, not every pass, while another process works.
                    if r.note != last_note {
                        if let Some(n) = &r.note {
                            tracing::info!("response actions: {n}");
                        }
                        last_note = r.note.clone();
                    }
                    if !r.states.is_empty() || !r.errors.is_empty() {
                        let mut r = r;
                        r.note = None;
                        tracing::info!("response actions: {}", r.describe());
                        for e in &r.errors {
                            tracing::warn!("response action: {e}");
                        }
                    }
                }
                Err(e) => tracing::error!("response actions: {e:#}"),
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Performs every due action and every due re-enable once.
    pub async fn pass(&self) -> Result<PassReport> {
        let now = self.clock.now_ms()?;
        let mut report = PassReport::default();
        if let Some(holder) = self.renew()? {
            report.note = Some(format!(
                "none performed by this process: another dphost process ({holder}) performs the response actions on this store"
            ));
            return Ok(report);
        }
        // One session per AD target per pass; a target that cannot be
        // reached is tried once per pass, not once per action.
        let mut sessions: Sessions = HashMap::new();
        let result = self.actions(now, &mut sessions, &mut report).await;
        for s in sessions.into_values().flatten() {
            s.close().await;
        }
        result?;
        Ok(report)
    }

    async fn actions(
        &self,
        now: i64,
        sessions: &mut Sessions,
        report: &mut PassReport,
    ) -> Result<()> {
        for a in outbox::due(&self.store, now, PASS_LIMIT)? {
            test_action_delay().await;
            if self.perform(&a, now, sessions, report).await? == Flow::Stop {
                return Ok(());
            }
        }
        for a in outbox::expired(&self.store, now, PASS_LIMIT)? {
            test_action_delay().await;
            if self.reenable(&a, now, sessions, report).await? == Flow::Stop {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Takes or renews the lease: None if held, else who holds it.
    fn renew(&self) -> Result<Option<String>> {
        Ok(match lease::take(&self.store, &self.me, self.lease_ms)? {
            Lease::Held => None,
            Lease::Busy { holder, .. } => Some(holder),
        })
    }

    /// Renews the lease before an action or a write.
    fn keep_lease(&self) -> Result<(), Fail> {
        match self.renew()? {
            None => Ok(()),
            Some(holder) => Err(Fail::LeaseLost(holder)),
        }
    }

    fn lease_lost(report: &mut PassReport, holder: &str) -> Flow {
        report.note = Some(format!(
            "stopped: another dphost process ({holder}) took over the response actions on this store"
        ));
        Flow::Stop
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

    /// A session that broke is opened again by the next action; a target
    /// that could not be reached stays so for the rest of this pass.
    fn forget_broken(e: &AdError, target: &str, sessions: &mut Sessions) {
        if e.is_connection() && matches!(sessions.get(target), Some(Ok(_))) {
            sessions.remove(target);
        }
    }

    async fn perform(
        &self,
        a: &Action,
        now: i64,
        sessions: &mut Sessions,
        report: &mut PassReport,
    ) -> Result<Flow> {
        if let Err(Fail::LeaseLost(holder)) = self.keep_lease() {
            return Ok(Self::lease_lost(report, &holder));
        }
        if a.kind != DISABLE_USER {
            report.count("failed");
            let msg = format!(
                "unknown action kind `{}`: this host performs only `{DISABLE_USER}`",
                a.kind
            );
            let audit = self.audit(a, "failed", msg.clone(), json!({}));
            report.errors.push(msg.clone());
            outbox::finish(&self.store, a, "failed", &msg, None, Some(audit))?;
            return Ok(Flow::Continue);
        }
        let p = Params::of(a);
        let requested = (a.attempts == 0).then(|| {
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
        let first = requested.is_some();
        if !outbox::claim(&self.store, a, requested)? {
            // Claimed or ended by another pass since this one listed it.
            return Ok(Flow::Continue);
        }
        if first {
            report.count("requested");
        }
        let Some(target) = self.target(&p.ad) else {
            report.count("failed");
            let msg = format!(
                "the action names [[ad]] `{}`, which is not configured: add it to the configuration (the action stays failed)",
                p.ad
            );
            report.errors.push(msg.clone());
            let audit = self.audit(a, "failed", msg.clone(), json!({}));
            outbox::finish(&self.store, a, "failed", &msg, None, Some(audit))?;
            return Ok(Flow::Continue);
        };
        let result = match self.session(target, sessions).await {
            Ok(session) => self.disable(a, &p, now, session, report).await,
            Err(e) => Err(Fail::Ad(e)),
        };
        let e = match result {
            Ok(()) => return Ok(Flow::Continue),
            Err(Fail::Store(e)) => return Err(e),
            Err(Fail::LeaseLost(holder)) => return Ok(Self::lease_lost(report, &holder)),
            Err(Fail::Ad(e)) => e,
        };
        Self::forget_broken(&e, &target.name, sessions);
        let attempts = a.attempts + 1;
        let refused = !e.retries_forever();
        let op_failures = a.op_failures + i64::from(refused);
        let msg = e.to_string();
        report
            .errors
            .push(format!("{} ({}): {msg}", a.target, a.connector));
        report.count("failed");
        match after_failure(attempts, op_failures, refused) {
            None => {
                let audit = self.audit(
                    a,
                    "failed",
                    format!(
                        "{msg}; given up after {op_failures} attempts the domain controller refused"
                    ),
                    json!({ "error": msg }),
                );
                // Accounts it disabled before giving up are still re-enabled
                // at the end of its duration.
                let expires = self.expiry(a, &p, now)?;
                outbox::finish(&self.store, a, "failed", &msg, expires, Some(audit))?;
            }
            Some(delay) => {
                let audit = self.audit(
                    a,
                    "failed",
                    format!("{msg}; retrying in {}", human_ms(delay)),
                    json!({ "error": msg, "retry_at": now + delay }),
                );
                outbox::retry(&self.store, a, now + delay, refused, &msg, audit)?;
            }
        }
        Ok(Flow::Continue)
    }

    async fn disable(
        &self,
        a: &Action,
        p: &Params,
        now: i64,
        session: &mut AdSession,
        report: &mut PassReport,
    ) -> Result<(), Fail> {
        let known: HashMap<String, outbox::AccountRow> = outbox::accounts(&self.store, a.seq)?
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
            outbox::finish(&self.store, a, "done", "not-found", None, Some(audit))?;
            return Ok(());
        }
        for dn in &dns {
            let row = known.get(dn);
            if row.is_some_and(|r| r.state != "intent") {
                continue;
            }
            let others = outbox::others(&self.store, &p.ad, dn, a.seq)?;
            // One person, several addresses in one alert: the account is
            // written once, by the first of the alert's actions to reach it.
            let same_alert = others.iter().find(|o| {
                p.alert_id.as_str().is_some()
                    && o.alert_id.as_deref() == p.alert_id.as_str()
                    && matches!(o.state.as_str(), "set" | "already")
            });
            if let (None, Some(o)) = (row, same_alert) {
                report.count("already-disabled");
                let how = if o.state == "set" {
                    "disabled"
                } else {
                    "found already disabled"
                };
                let audit = self.audit(
                    a,
                    "already-disabled",
                    format!(
                        "{dn} is also the account of {}, which this alert's action {how}: nothing changed",
                        o.target
                    ),
                    json!({ "user": { "dn": dn }, "same_account_as": { "action_id": o.action_id, "target": o.target } }),
                );
                outbox::set_account(&self.store, a, dn, o.old_uac, "already", Some(audit))?;
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
                outbox::set_account(&self.store, a, dn, None, "gone", Some(audit))?;
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
            match verdict(&account, &session.guard) {
                Verdict::Allowed => {}
                Verdict::Protected(why) => {
                    report.count("skipped-protected");
                    let audit = self.audit(
                        a,
                        "skipped-protected",
                        format!("{} was not disabled: {why}", account.dn),
                        user(uac),
                    );
                    outbox::set_account(&self.store, a, dn, Some(uac), "protected", Some(audit))?;
                    continue;
                }
                // Never disabled blindly: the action waits, audited.
                Verdict::Unverifiable(why) => return Err(Fail::Ad(AdError::Guard(why))),
            }
            if uac & ACCOUNTDISABLE != 0 {
                // Disabled already: by us if an interrupted attempt recorded
                // the account enabled, and it now holds exactly what that
                // write would have made of it. Residual risk (README): an
                // administrator who disabled it while we were down, changing
                // nothing else, is taken for our write, and at a limited
                // duration's end we would re-enable it. The DC cannot tell
                // us who wrote, and the window is a crash between recording
                // the intent and the DC's answer.
                let ours = row
                    .and_then(|r| r.old_uac)
                    .is_some_and(|old| old & ACCOUNTDISABLE == 0 && uac == old | ACCOUNTDISABLE);
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
                    let by = match others
                        .iter()
                        .find(|o| o.state == "set" && o.wants_disabled(now))
                    {
                        Some(o) => format!(
                            " by dphost's action for {} (alert {}); it stays disabled while any of dphost's actions wants it so",
                            o.target,
                            o.alert_id.as_deref().unwrap_or("?")
                        ),
                        None if row.is_some() => {
                            " by someone else while an interrupted attempt was about to (its value changed meanwhile), so it is not dphost's to re-enable".to_string()
                        }
                        None => String::new(),
                    };
                    (
                        "already-disabled",
                        "already",
                        format!("{} was already disabled{by}: nothing changed", account.dn),
                        uac,
                    )
                };
                report.count(state);
                let mut extra = user(uac);
                extra["user"]["user_account_control"]["before"] = before.into();
                let audit = self.audit(a, state, msg, extra);
                outbox::set_account(&self.store, a, dn, Some(before), row_state, Some(audit))?;
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
                outbox::set_account(&self.store, a, dn, Some(uac), "would-set", Some(audit))?;
                continue;
            }
            self.keep_lease()?;
            outbox::set_account(&self.store, a, dn, Some(uac), "intent", None)?;
            fault_point("before-modify");
            if let Err(e) = session.write_uac(dn, new).await {
                if !e.is_connection() {
                    // The DC answered no: nothing was written, and an intent
                    // left behind would take a later disable by someone else
                    // for ours.
                    outbox::forget_account(&self.store, a, dn)?;
                }
                return Err(e.into());
            }
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
            outbox::set_account(&self.store, a, dn, Some(uac), "set", Some(audit))?;
        }
        // The action's outcome, from every account's.
        let rows = outbox::accounts(&self.store, a.seq)?;
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
        let expires = self.expiry(a, p, now)?;
        outbox::finish(&self.store, a, "done", outcome, expires, None)?;
        Ok(())
    }

    /// When an action that ends now stops wanting its accounts disabled:
    /// with a limited duration, if it disabled one, or found one disabled
    /// (it may be handed the re-enable of an overlapping action that set
    /// the bit).
    fn expiry(&self, a: &Action, p: &Params, now: i64) -> Result<Option<i64>> {
        let rows = outbox::accounts(&self.store, a.seq)?;
        let wants = rows
            .iter()
            .any(|r| matches!(r.state.as_str(), "set" | "already"));
        Ok(p.duration_ms.filter(|_| wants).map(|d| now + d))
    }

    /// At an action's expiry: each account it disabled is re-enabled, or
    /// handed over to another action that still wants it disabled.
    async fn reenable(
        &self,
        a: &Action,
        now: i64,
        sessions: &mut Sessions,
        report: &mut PassReport,
    ) -> Result<Flow> {
        let p = Params::of(a);
        let result = self.reenable_accounts(a, &p, now, sessions, report).await;
        let e = match result {
            Ok(()) => {
                let rows = outbox::accounts(&self.store, a.seq)?;
                let has = |s: &str| rows.iter().any(|r| r.state == s);
                // A failed action keeps its status; it is not due again.
                if a.status == "failed" {
                    let outcome = a.outcome.as_deref().unwrap_or("failed");
                    outbox::finish(&self.store, a, "failed", outcome, None, None)?;
                    return Ok(Flow::Continue);
                }
                let (status, outcome) = if has("reenabled") {
                    ("reenabled", "re-enabled")
                } else if has("handed-over") {
                    ("expired", "handed-over")
                } else if has("reenable-skipped") {
                    ("expired", "re-enable-skipped")
                } else {
                    ("expired", a.outcome.as_deref().unwrap_or("done"))
                };
                outbox::finish(&self.store, a, status, outcome, a.expires_ms, None)?;
                return Ok(Flow::Continue);
            }
            Err(Fail::Store(e)) => return Err(e),
            Err(Fail::LeaseLost(holder)) => return Ok(Self::lease_lost(report, &holder)),
            Err(Fail::Ad(e)) => e,
        };
        Self::forget_broken(&e, &p.ad, sessions);
        // Audited and backed off like a disable; never given up: the
        // account stays disabled until it succeeds.
        let delay = backoff_ms(a.reenable_failures + 1);
        let msg = format!("re-enabling the account(s) of {}: {e}", a.target);
        report.count("failed");
        report.errors.push(format!("{msg} ({})", a.connector));
        let audit = self.audit(
            a,
            "failed",
            format!("{msg}; retrying in {}", human_ms(delay)),
            json!({ "phase": "re-enable", "error": e.to_string(), "retry_at": now + delay }),
        );
        outbox::reenable_retry(&self.store, a, now + delay, audit)?;
        Ok(Flow::Continue)
    }

    async fn reenable_accounts(
        &self,
        a: &Action,
        p: &Params,
        now: i64,
        sessions: &mut Sessions,
        report: &mut PassReport,
    ) -> Result<(), Fail> {
        for row in outbox::accounts(&self.store, a.seq)? {
            // Only what this product set, and only if it set it.
            if row.state != "set" {
                continue;
            }
            let others = outbox::others(&self.store, &p.ad, &row.dn, a.seq)?;
            if let Some(heir) = outbox::heir(&others, now) {
                report.count("handed-over");
                let until = match heir.wanted_until(now) {
                    Some(t) => format!("until {}", rfc3339_ms(t)),
                    None => "for good".to_string(),
                };
                let audit = self.audit(
                    a,
                    "handed-over",
                    format!(
                        "{} stays disabled: dphost's action for {} (alert {}) still wants it disabled ({until}); it re-enables the account when it ends",
                        row.dn,
                        heir.target,
                        heir.alert_id.as_deref().unwrap_or("?")
                    ),
                    json!({ "user": { "dn": row.dn },
                        "handed_over_to": { "action_id": heir.action_id, "target": heir.target,
                            "alert_id": heir.alert_id, "until": heir.wanted_until(now) } }),
                );
                outbox::hand_over(&self.store, a, &row.dn, row.old_uac, heir, audit)?;
                continue;
            }
            let Some(target) = self.target(&p.ad) else {
                return Err(Fail::Ad(AdError::Connection(format!(
                    "[[ad]] `{}` is no longer configured: add it back to have the account(s) dphost disabled re-enabled (they stay disabled until then)",
                    p.ad
                ))));
            };
            let session = self.session(target, sessions).await?;
            let Some(account) = session.read_account(&row.dn).await? else {
                report.count("not-found");
                let audit = self.audit(
                    a,
                    "not-found",
                    format!("{} no longer exists: nothing to re-enable", row.dn),
                    json!({ "user": { "dn": row.dn } }),
                );
                outbox::set_account(&self.store, a, &row.dn, row.old_uac, "gone", Some(audit))?;
                continue;
            };
            let uac = account.user_account_control;
            let user = |after: i64| {
                json!({ "user": { "dn": row.dn, "name": account.sam_account_name,
                    "user_account_control": { "before": uac, "after": after } } })
            };
            if uac & ACCOUNTDISABLE == 0 {
                report.count("re-enable-skipped");
                let audit = self.audit(
                    a,
                    "re-enable-skipped",
                    format!(
                        "{} was enabled again by someone else before the end of its {}: nothing changed",
                        row.dn,
                        human_ms(p.duration_ms.unwrap_or(0))
                    ),
                    user(uac),
                );
                outbox::set_account(
                    &self.store,
                    a,
                    &row.dn,
                    row.old_uac,
                    "reenable-skipped",
                    Some(audit),
                )?;
                continue;
            }
            let new = uac & !ACCOUNTDISABLE;
            self.keep_lease()?;
            session.write_uac(&row.dn, new).await?;
            report.count("re-enabled");
            let audit = self.audit(
                a,
                "re-enabled",
                format!(
                    "{} re-enabled at the end of its {} (userAccountControl {uac} -> {new})",
                    row.dn,
                    human_ms(p.duration_ms.unwrap_or(0))
                ),
                user(new),
            );
            outbox::set_account(
                &self.store,
                a,
                &row.dn,
                row.old_uac,
                "reenabled",
                Some(audit),
            )?;
        }
        Ok(())
    }
}

impl Drop for Worker {
    /// `dphost once` ends, or `dphost run` stops: the next process need not
    /// wait for the lease to expire.
    fn drop(&mut self) {
        if let Err(e) = lease::release(&self.store, &self.me) {
            tracing::warn!("response actions: could not give the lease back: {e:#}");
        }
    }
}

fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker on a fresh store, with no [[ad]] target and a clock file.
    fn worker(dir: &std::path::Path) -> Worker {
        std::fs::write(dir.join("clock"), "1000000000000").unwrap();
        let config = Config::parse(
            "[host]\ndata_dir = \"data\"\nclock_file = \"clock\"\n",
            &dir.join("dphost.toml"),
        )
        .unwrap();
        let store = Arc::new(Store::open(&dir.join("data")).unwrap());
        Worker::new(Arc::new(config), store).unwrap()
    }

    /// A queued `disable-user` action of bob@corp.test in [[ad]] `gone`.
    fn queued(w: &Worker) -> Action {
        let batch = crate::store::Batch {
            actions: vec![crate::store::NewAction {
                id: "a1".into(),
                kind: "disable-user".into(),
                target: "bob@corp.test".into(),
                reason: "test".into(),
                params: json!({"ad": "gone", "duration_ms": 3_600_000, "alert_id": "al1"})
                    .to_string(),
            }],
            ..Default::default()
        };
        let owner = crate::store::Owner {
            connector: "c".into(),
            tenant: "t".into(),
            fence: None,
        };
        w.store.commit(&owner, &batch).unwrap();
        let due = outbox::due(&w.store, i64::MAX, 10).unwrap();
        assert_eq!(due.len(), 1);
        due.into_iter().next().unwrap()
    }

    /// An action that disabled `dn` in [[ad]] `gone` and expires at `expires`.
    fn disabled_by_us(w: &Worker, expires: i64) -> i64 {
        let a = queued(w);
        assert!(outbox::claim(&w.store, &a, None).unwrap());
        outbox::set_account(&w.store, &a, "CN=bob", Some(512), "set", None).unwrap();
        outbox::finish(&w.store, &a, "done", "done", Some(expires), None).unwrap();
        a.seq
    }

    fn audits(w: &Worker) -> Vec<Value> {
        let mut out = Vec::new();
        w.store
            .scan(crate::store::Index::Actions, &Default::default(), |r| {
                out.push(serde_json::from_str(&r.body).unwrap());
                Ok(true)
            })
            .unwrap();
        out
    }

    #[tokio::test]
    async fn a_removed_target_is_retried_with_backoff_and_audited_per_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let w = worker(dir.path());
        let now = 1_000_000_000_000;
        let seq = disabled_by_us(&w, now - 1);
        let r = w.pass().await.unwrap();
        assert_eq!(r.states.get("failed"), Some(&1), "{r:?}");
        assert!(
            r.errors[0].contains("[[ad]] `gone` is no longer configured"),
            "{r:?}"
        );
        let a = audits(&w);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0]["event_type"], "failed");
        assert_eq!(a[0]["phase"], "re-enable");
        assert!(
            a[0]["message"]
                .as_str()
                .unwrap()
                .ends_with("retrying in 30s"),
            "{a:?}"
        );
        // The next passes within the backoff neither log nor audit.
        for _ in 0..3 {
            assert!(w.pass().await.unwrap().is_empty());
        }
        assert_eq!(audits(&w).len(), 1);
        std::fs::write(dir.path().join("clock"), (now + 30_000).to_string()).unwrap();
        assert_eq!(w.pass().await.unwrap().states.get("failed"), Some(&1));
        let a = audits(&w);
        assert_eq!(a.len(), 2);
        assert!(
            a[1]["message"]
                .as_str()
                .unwrap()
                .ends_with("retrying in 1m"),
            "{a:?}"
        );
        // Still the account's re-enabler: nothing was handed over or lost.
        assert_eq!(outbox::accounts(&w.store, seq).unwrap()[0].state, "set");
    }

    #[tokio::test]
    async fn a_second_worker_on_the_store_does_nothing_while_the_first_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = worker(dir.path());
        let second = Worker::new(first.config.clone(), first.store.clone()).unwrap();
        let now = 1_000_000_000_000;
        assert!(first.pass().await.unwrap().is_empty());
        disabled_by_us(&first, now - 1);
        let r = second.pass().await.unwrap();
        assert!(r.states.is_empty() && r.errors.is_empty(), "{r:?}");
        assert!(
            r.describe().contains("another dphost process (pid")
                && r.describe().contains("performs the response actions"),
            "{}",
            r.describe()
        );
        assert!(audits(&first).is_empty());
        // Once the first is gone (`dphost once` ends), the second takes over.
        drop(first);
        assert_eq!(second.pass().await.unwrap().states.get("failed"), Some(&1));
    }

    #[test]
    fn a_claim_fails_once_another_pass_claimed_or_ended_the_action() {
        let dir = tempfile::tempdir().unwrap();
        let w = worker(dir.path());
        queued(&w);
        let listed = outbox::due(&w.store, i64::MAX, 10).unwrap();
        assert_eq!(listed.len(), 1);
        let a = &listed[0];
        assert!(outbox::claim(&w.store, a, None).unwrap());
        // Listed before that claim: refused, and changes nothing.
        assert!(!outbox::claim(&w.store, a, None).unwrap());
        outbox::finish(&w.store, a, "done", "done", Some(1), None).unwrap();
        let again = Action {
            attempts: 1,
            ..a.clone()
        };
        assert!(!outbox::claim(&w.store, &again, None).unwrap());
        let ended = outbox::expired(&w.store, i64::MAX, 10).unwrap();
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].attempts, 1);
    }

    fn other(
        seq: i64,
        state: &str,
        status: &str,
        expires: Option<i64>,
        duration: Option<i64>,
    ) -> outbox::OtherRow {
        outbox::OtherRow {
            seq,
            action_id: format!("a{seq}"),
            target: "bob@corp.test".into(),
            alert_id: Some(format!("alert{seq}")),
            status: status.into(),
            expires_ms: expires,
            duration_ms: duration,
            old_uac: Some(512),
            state: state.into(),
        }
    }

    #[test]
    fn the_longest_living_action_that_wants_the_account_disabled_inherits_it() {
        let now = 10_000;
        // Ended, expired, dry runs and protected records want nothing.
        let none = [
            other(1, "already", "done", Some(now), Some(1)),
            other(2, "already", "expired", Some(now + 5), Some(1)),
            other(3, "would-set", "done", None, None),
            other(4, "protected", "done", None, None),
            other(5, "already", "failed", None, None),
            other(6, "handed-over", "done", None, None),
        ];
        assert_eq!(outbox::heir(&none, now), None);
        let mut rows = none.to_vec();
        rows.push(other(7, "already", "done", Some(now + 100), Some(1)));
        rows.push(other(8, "already", "done", Some(now + 50), Some(1)));
        assert_eq!(outbox::heir(&rows, now).unwrap().seq, 7);
        // Still retrying: wanted for its whole duration from now.
        rows.push(other(9, "already", "pending", None, Some(200)));
        assert_eq!(outbox::heir(&rows, now).unwrap().seq, 9);
        // Forever outlives everything.
        rows.push(other(10, "already", "done", None, None));
        assert_eq!(outbox::heir(&rows, now).unwrap().seq, 10);
    }

    #[test]
    fn connection_retries_do_not_use_up_the_refused_attempts() {
        // Four connection problems, then the DC refuses once: retried.
        assert_eq!(
            after_failure(5, 1, true),
            Some(MAX_RETRY_MS.min(30_000 << 4))
        );
        // Connection problems are retried for good, an hour apart at most.
        assert_eq!(after_failure(40, 0, false), Some(MAX_RETRY_MS));
        assert_eq!(after_failure(1, 0, false), Some(30_000));
        assert_eq!(after_failure(2, 0, false), Some(60_000));
        // The fifth refusal gives up, however few the attempts before.
        assert_eq!(after_failure(5, 5, true), None);
        assert_eq!(after_failure(9, 4, true), Some(MAX_RETRY_MS));
    }
}
