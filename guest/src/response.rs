//! Response policy: which alerts have their recipients' accounts disabled.
//!
//! The host validates `[connector.response.disable_user]` (the AD target,
//! the duration) and hands it over as `response.disable_user`; this module
//! checks the alert types and decides. An alert of a triggering type queues
//! one `disable-user` action per recipient address, in the same commit as
//! the alert. The action id is derived from the alert id and the address
//! (lower-cased), so committing it again — a re-collected window, a run
//! retried after a crash, the alert growing — queues nothing new: the host's
//! outbox keeps one action per id.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::alerts::alert_type_name;
use crate::normalise::EventType;
use crate::platform::Action;

pub const DISABLE_USER: &str = "disable-user";

/// The alert types a policy may name: the part after `Proofpoint TAP `.
pub fn trigger_name(event_type: EventType) -> &'static str {
    alert_type_name(event_type)
        .strip_prefix("Proofpoint TAP ")
        .unwrap_or(alert_type_name(event_type))
}

pub const DEFAULT_TRIGGERS: [&str; 2] = ["clickDelivered", "messageDelivered"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisableUserPolicy {
    pub enabled: bool,
    pub ad: String,
    pub on: Vec<EventType>,
    pub duration_ms: Option<i64>,
    pub dry_run: bool,
}

impl DisableUserPolicy {
    /// Parses `response` (as the host passes it); None when it is absent or
    /// the action is off. Problems are appended to `problems`.
    pub fn from_json(
        value: Option<&Value>,
        connector: &str,
        problems: &mut Vec<String>,
    ) -> Option<DisableUserPolicy> {
        let policy = value?.get("disable_user")?;
        let Some(p) = policy.as_object() else {
            problems.push(format!(
                "`response.disable_user` in connector `{connector}` must be a table."
            ));
            return None;
        };
        if p.get("enabled").and_then(Value::as_bool) != Some(true) {
            return None;
        }
        let Some(ad) = p
            .get("ad")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        else {
            problems.push(format!(
                "`response.disable_user.ad` in connector `{connector}` must name an [[ad]] target."
            ));
            return None;
        };
        let names: Vec<&str> = match p.get("on") {
            None | Some(Value::Null) => DEFAULT_TRIGGERS.to_vec(),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            Some(_) => Vec::new(),
        };
        let mut on = Vec::new();
        for name in &names {
            match EventType::ALL.into_iter().find(|t| trigger_name(*t) == *name) {
                Some(t) => on.push(t),
                None => problems.push(format!(
                    "`response.disable_user.on` in connector `{connector}` names `{name}`, which is not an alert type of this connector: use {}.",
                    EventType::ALL
                        .iter()
                        .map(|t| format!("`{}`", trigger_name(*t)))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        if on.is_empty() && problems.is_empty() {
            problems.push(format!(
                "`response.disable_user.on` in connector `{connector}` names no alert type."
            ));
        }
        Some(DisableUserPolicy {
            enabled: true,
            ad: ad.to_string(),
            on,
            duration_ms: p
                .get("duration_ms")
                .and_then(Value::as_i64)
                .filter(|d| *d > 0),
            dry_run: p.get("dry_run").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    pub fn triggers(&self, event_type: EventType) -> bool {
        self.enabled && self.on.contains(&event_type)
    }

    /// The actions for the recipients of one event counted into alert
    /// `alert_id` (its `email.recipient.addresses`; empty if the alert type
    /// does not trigger).
    pub fn actions(
        &self,
        alert_id: &str,
        event_type: EventType,
        recipients: &[String],
    ) -> Vec<Action> {
        if !self.triggers(event_type) {
            return Vec::new();
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for address in recipients {
            let address = address.trim().to_lowercase();
            if address.is_empty() || !seen.insert(address.clone()) {
                continue;
            }
            out.push(Action {
                id: action_id(alert_id, &address),
                kind: DISABLE_USER.to_string(),
                reason: format!(
                    "{} alert {alert_id}: {address} is a recipient",
                    alert_type_name(event_type)
                ),
                params: json!({
                    "ad": self.ad,
                    "dry_run": self.dry_run,
                    "duration_ms": self.duration_ms,
                    "alert_id": alert_id,
                    "alert_type": trigger_name(event_type),
                })
                .to_string(),
                target: address,
            });
        }
        out
    }
}

/// Stable per (alert, address): the same pair always gets the same id.
pub fn action_id(alert_id: &str, address: &str) -> String {
    let identity = json!([DISABLE_USER, alert_id, address.to_lowercase()]);
    hex::encode(&Sha256::digest(identity.to_string().as_bytes())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: Value) -> (Option<DisableUserPolicy>, Vec<String>) {
        let mut problems = Vec::new();
        let p = DisableUserPolicy::from_json(Some(&json), "c", &mut problems);
        (p, problems)
    }

    fn event(recipients: &[&str]) -> Vec<String> {
        recipients.iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn off_by_default_and_defaults_when_on() {
        assert_eq!(policy(json!({})).0, None);
        assert_eq!(
            policy(json!({"disable_user": {"enabled": false, "ad": "corp"}})).0,
            None
        );
        let (p, problems) = policy(json!({"disable_user": {"enabled": true, "ad": "corp"}}));
        assert!(problems.is_empty(), "{problems:?}");
        let p = p.unwrap();
        assert_eq!(
            p.on,
            vec![EventType::ClickPermitted, EventType::MessageDelivered]
        );
        assert!(p.triggers(EventType::ClickPermitted));
        assert!(!p.triggers(EventType::ClickBlocked));
        assert_eq!(p.duration_ms, None);
        assert!(!p.dry_run);
    }

    #[test]
    fn unknown_alert_types_are_named() {
        let (_, problems) = policy(
            json!({"disable_user": {"enabled": true, "ad": "corp", "on": ["clickPermitted"]}}),
        );
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("`clickPermitted`"), "{problems:?}");
        assert!(problems[0].contains("`clickDelivered`"), "{problems:?}");
    }

    #[test]
    fn one_action_per_address_with_stable_ids() {
        let (p, _) = policy(json!({"disable_user": {
            "enabled": true, "ad": "corp", "on": ["clickDelivered"], "duration_ms": 3600000, "dry_run": true
        }}));
        let p = p.unwrap();
        let e = event(&["Alice@corp.test", "bob@corp.test", "alice@corp.test", ""]);
        let a = p.actions("alert1", EventType::ClickPermitted, &e);
        assert_eq!(
            a.iter().map(|a| a.target.as_str()).collect::<Vec<_>>(),
            vec!["alice@corp.test", "bob@corp.test"]
        );
        assert_eq!(a[0].kind, "disable-user");
        let params: Value = serde_json::from_str(&a[0].params).unwrap();
        assert_eq!(params["ad"], "corp");
        assert_eq!(params["duration_ms"], 3_600_000);
        assert_eq!(params["dry_run"], true);
        assert_eq!(params["alert_id"], "alert1");
        // Same alert and address: same id; another alert: another id.
        let again = p.actions(
            "alert1",
            EventType::ClickPermitted,
            &event(&["ALICE@corp.test"]),
        );
        assert_eq!(again[0].id, a[0].id);
        assert_ne!(a[0].id, a[1].id);
        assert_ne!(action_id("alert2", "alice@corp.test"), a[0].id);
        // Types not in `on` queue nothing.
        assert!(p
            .actions("alert1", EventType::MessageDelivered, &e)
            .is_empty());
    }
}
