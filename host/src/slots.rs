//! Run slots: at most `[host] max_concurrent_runs` sandboxes run at once,
//! and at most `max_runs_per_tenant` of them for one tenant, so a tenant
//! with many slow or runaway connectors (each may burn its whole CPU budget
//! or run timeout) cannot hold every slot while other tenants' runs fall
//! due.

use crate::config::HostConfig;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct RunSlots {
    host: Arc<Semaphore>,
    per_tenant: usize,
    tenants: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A run's slot: released when dropped.
pub struct RunSlot {
    _host: OwnedSemaphorePermit,
    _tenant: OwnedSemaphorePermit,
}

impl RunSlots {
    pub fn new(host: &HostConfig) -> RunSlots {
        RunSlots {
            host: Arc::new(Semaphore::new(host.max_concurrent_runs.max(1))),
            per_tenant: host.runs_per_tenant(),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a slot for one of `tenant`'s runs. The tenant's own share is
    /// taken first, so a tenant at its limit waits without holding a host
    /// slot that another tenant could use.
    pub async fn acquire(&self, tenant: &str) -> RunSlot {
        let share = self
            .tenants
            .lock()
            .expect("run slots lock poisoned")
            .entry(tenant.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)))
            .clone();
        let tenant = share.acquire_owned().await.expect("never closed");
        let host = self
            .host
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        RunSlot {
            _host: host,
            _tenant: tenant,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn slots(max: usize, per_tenant: Option<usize>) -> RunSlots {
        RunSlots::new(&HostConfig {
            max_concurrent_runs: max,
            max_runs_per_tenant: per_tenant,
            ..HostConfig::default()
        })
    }

    async fn try_acquire(s: &RunSlots, tenant: &str) -> Option<RunSlot> {
        tokio::time::timeout(Duration::from_millis(50), s.acquire(tenant))
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_tenant_at_its_share_leaves_the_other_slots_to_other_tenants() {
        let s = slots(4, None);
        let a1 = try_acquire(&s, "a").await.expect("a: 1 of 2");
        let _a2 = try_acquire(&s, "a").await.expect("a: 2 of 2");
        assert!(try_acquire(&s, "a").await.is_none(), "a is at its share");
        let _b1 = try_acquire(&s, "b").await.expect("b gets a slot");
        let _b2 = try_acquire(&s, "b").await.expect("b gets the last slot");
        assert!(try_acquire(&s, "c").await.is_none(), "the host is full");
        drop(a1);
        assert!(try_acquire(&s, "c").await.is_some(), "a freed a host slot");
    }

    #[tokio::test]
    async fn the_share_is_configurable_and_never_above_the_host_limit() {
        let s = slots(2, Some(1));
        let _a = try_acquire(&s, "a").await.expect("a");
        assert!(try_acquire(&s, "a").await.is_none());
        assert_eq!(
            HostConfig {
                max_concurrent_runs: 3,
                max_runs_per_tenant: Some(10),
                ..HostConfig::default()
            }
            .runs_per_tenant(),
            3
        );
        assert_eq!(
            HostConfig {
                max_concurrent_runs: 1,
                ..HostConfig::default()
            }
            .runs_per_tenant(),
            1
        );
    }
}
