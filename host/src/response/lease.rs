//! One response worker per store: a lease row in the store names the
//! process that performs the response actions, until a wall-clock expiry.
//!
//! Two workers on one store (`dphost once` beside `dphost run`) would both
//! act on an action and overwrite each other's record of what they did. The
//! worker takes the lease at the start of a pass and renews it before each
//! action and each write to the directory; a pass that cannot take or keep
//! it does nothing. `dphost once` gives it back when it ends; a holder that
//! died (a crash, kill -9) is recognised on the same machine by its process
//! id and start time, so a restart need not wait for the expiry, which
//! covers the rest (another PID namespace, a hung process).
//!
//! The expiry is real time, never the test clock file: tests move that clock
//! by hours, which would expire every lease at once.

use crate::store::Store;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// Who holds (or wants) the lease. Stored as JSON in the lease row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// The process's start time in clock ticks since boot
    /// (`/proc/PID/stat`), 0 if unknown: tells a reused PID apart.
    pub start: u64,
    /// The kernel's boot id and this process's PID namespace: a PID means
    /// something only within both.
    pub boot: String,
    pub pid_ns: String,
    /// Distinguishes two workers of one process.
    pub nonce: u64,
}

impl Owner {
    /// This process, as a new lease owner.
    pub fn this_process() -> Owner {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let pid = std::process::id();
        Owner {
            pid,
            start: process_start(pid).unwrap_or(0),
            boot: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            pid_ns: pid_namespace(),
            nonce: crate::store::now_ms() as u64 * 1000 + NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// True only when the holder certainly no longer runs: same boot and
    /// PID namespace as this process, and its PID is gone or now belongs to
    /// a process started at another time.
    fn is_dead(&self) -> bool {
        let me = Owner::this_process();
        if self.boot.is_empty() || self.boot != me.boot || self.pid_ns != me.pid_ns {
            return false;
        }
        match process_start(self.pid) {
            None => true,
            Some(start) => self.start != 0 && start != self.start,
        }
    }

    /// `pid 1234`, for messages.
    pub fn describe(&self) -> String {
        format!("pid {}", self.pid)
    }
}

fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Field 22 of `/proc/PID/stat` (after the parenthesised command name,
/// which may itself hold spaces and parentheses).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The result of taking or renewing the lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Lease {
    Held,
    /// Another live process holds it until `until_ms` (real time).
    Busy {
        holder: String,
        until_ms: i64,
    },
}

/// Takes the lease for `ttl_ms`, or renews it: free, expired, ours or held
/// by a dead process -> ours. Each try is one transaction in the store, so
/// two processes cannot both succeed; a dead holder is replaced only if it
/// still holds the lease when the second try runs.
pub fn take(store: &Store, me: &Owner, ttl_ms: i64) -> Result<Lease> {
    let mine = serde_json::to_string(me)?;
    let Some(held) = store.response_lease_take(&mine, ttl_ms, None)? else {
        return Ok(Lease::Held);
    };
    let holder: Option<Owner> = serde_json::from_str(&held.owner).ok();
    if holder.as_ref().is_some_and(Owner::is_dead) {
        match store.response_lease_take(&mine, ttl_ms, Some(&held.owner))? {
            None => return Ok(Lease::Held),
            Some(other) => return Ok(busy(other)),
        }
    }
    Ok(busy(held))
}

fn busy(held: crate::store::LeaseHolder) -> Lease {
    let holder: Option<Owner> = serde_json::from_str(&held.owner).ok();
    Lease::Busy {
        holder: holder.map(|h| h.describe()).unwrap_or(held.owner),
        until_ms: held.until_ms,
    }
}

/// Gives the lease back if `me` holds it.
pub fn release(store: &Store, me: &Owner) -> Result<()> {
    store.response_lease_release(&serde_json::to_string(me)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn one_holder_at_a_time_until_it_releases_or_expires() {
        let (_d, store) = store();
        let (a, b) = (Owner::this_process(), Owner::this_process());
        assert_ne!(a, b);
        assert_eq!(take(&store, &a, 60_000).unwrap(), Lease::Held);
        assert!(matches!(
            take(&store, &b, 60_000).unwrap(),
            Lease::Busy { .. }
        ));
        // Renewing is taking again.
        assert_eq!(take(&store, &a, 60_000).unwrap(), Lease::Held);
        // Releasing by someone else does nothing.
        release(&store, &b).unwrap();
        assert!(matches!(
            take(&store, &b, 60_000).unwrap(),
            Lease::Busy { .. }
        ));
        release(&store, &a).unwrap();
        assert_eq!(take(&store, &b, 60_000).unwrap(), Lease::Held);
        // An expired lease is free: `a` takes it and `b` cannot renew.
        assert_eq!(take(&store, &b, -1).unwrap(), Lease::Held);
        assert_eq!(take(&store, &a, 60_000).unwrap(), Lease::Held);
        assert!(matches!(
            take(&store, &b, 60_000).unwrap(),
            Lease::Busy { .. }
        ));
    }

    #[test]
    fn a_dead_holder_is_replaced_at_once_a_live_one_is_not() {
        let (_d, store) = store();
        // A child process that has exited: its PID is gone (or reused by a
        // process started later).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = process_start(pid);
        child.wait().unwrap();
        let dead = Owner {
            pid,
            start: start.unwrap_or(1),
            ..Owner::this_process()
        };
        assert!(dead.is_dead());
        assert_eq!(take(&store, &dead, 3_600_000).unwrap(), Lease::Held);
        let me = Owner::this_process();
        assert_eq!(take(&store, &me, 60_000).unwrap(), Lease::Held);

        // A live holder (this very process, another worker) is waited for.
        let other = Owner::this_process();
        assert!(!other.is_dead());
        match take(&store, &other, 60_000).unwrap() {
            Lease::Busy { holder, .. } => {
                assert_eq!(holder, format!("pid {}", std::process::id()))
            }
            Lease::Held => panic!("a live holder's lease was taken"),
        }
        // Another machine's holder cannot be checked: only its expiry counts.
        let elsewhere = Owner {
            boot: "another-boot".into(),
            pid,
            ..Owner::this_process()
        };
        assert!(!elsewhere.is_dead());
    }
}
