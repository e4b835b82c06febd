//! Response actions: what the host does about an alert, outside the sandbox.
//!
//! A connector component decides (its response policy) and queues actions in
//! the store's outbox in the same commit as the alert that caused them; this
//! module performs them. The only action today is `disable-user` against
//! Active Directory:
//!
//! - `config`: `[[ad]]` targets and `[connector.response.disable_user]`;
//! - `ldap`: the AD client (LDAPS or StartTLS, CA-verified) and guardrails;
//! - `outbox`: the actions' durable state and their audit trail (the
//!   Actions index);
//! - `lease`: one worker per store, whichever process runs it;
//! - `worker`: claims due actions, performs them, retries, re-enables at
//!   expiry. `dphost run` runs it continuously, `dphost once` once.

pub mod config;
pub mod ldap;
pub mod lease;
pub mod outbox;
pub mod worker;

/// The action kind this host performs.
pub const DISABLE_USER: &str = "disable-user";

/// Test hook: `DPHOST_TEST_FAULT=<point>` aborts the process at that point,
/// as a crash (kill -9, power loss) would. Points: `after-collect` (actions
/// committed, none performed), `before-modify` (an account's old value is
/// recorded, the write not sent), `after-modify` (written, not recorded).
pub fn fault_point(point: &str) {
    if std::env::var("DPHOST_TEST_FAULT").is_ok_and(|v| v == point) {
        eprintln!("DPHOST_TEST_FAULT: aborting at {point}");
        std::process::abort();
    }
}

/// Test hook: `DPHOST_TEST_ACTION_DELAY_MS=<ms>` waits that long before each
/// action a pass takes, so that two processes' passes surely overlap.
pub async fn test_action_delay() {
    if let Some(ms) = std::env::var("DPHOST_TEST_ACTION_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}
