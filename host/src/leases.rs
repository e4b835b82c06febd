//! Connector leases: on a store several hosts share (PostgreSQL), each
//! connector is run by at most one host at a time.
//!
//! Every `lease_secs / 3` a round (`store::Backend::lease_round`, one
//! transaction) renews this host's leases, gives back what is past its fair
//! share, and takes free or expired ones up to it. A run commits under the
//! lease's fencing token (`store::Fence`), checked in the commit's own
//! transaction, so a host that was paused or cut off past its lease cannot
//! commit once another host took the connector over. A host that cannot
//! reach the store for a whole lease time drops its leases itself: the
//! others take them over by then.
//!
//! On the embedded SQLite store one process owns everything: every
//! connector is this host's, without tokens.

use crate::store::{Fence, LeaseRequest, Store};
use anyhow::Result;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// What a host's leases look like now, for status and metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LeaseState {
    pub host: String,
    /// Whether the store is shared (leases apply).
    pub shared: bool,
    /// connector -> fencing token.
    pub held: BTreeMap<String, i64>,
    pub hosts: usize,
    pub share: usize,
    pub acquired_total: u64,
    pub lost_total: u64,
    pub released_total: u64,
    /// The last round's failure, until a round succeeds.
    pub last_error: Option<String>,
}

pub struct Leases {
    store: Arc<Store>,
    pub host: String,
    ttl: Duration,
    greedy: bool,
    held: watch::Sender<BTreeMap<String, i64>>,
    state: Mutex<LeaseState>,
    last_ok: Mutex<Instant>,
    kick: Notify,
}

impl Leases {
    /// `greedy`: take every free connector (`dphost once`), not a share.
    pub fn new(store: Arc<Store>, host: String, lease_secs: u64, greedy: bool) -> Arc<Leases> {
        let shared = store.shared();
        Arc::new(Leases {
            store,
            state: Mutex::new(LeaseState {
                host: host.clone(),
                shared,
                ..Default::default()
            }),
            host,
            ttl: Duration::from_secs(lease_secs),
            greedy,
            held: watch::channel(BTreeMap::new()).0,
            last_ok: Mutex::new(Instant::now()),
            kick: Notify::new(),
        })
    }

    pub fn shared(&self) -> bool {
        self.store.shared()
    }

    /// None: this host does not hold `connector`. Some(fence): it does (no
    /// fence on an unshared store).
    pub fn fence(&self, connector: &str) -> Option<Option<Fence>> {
        let token = *self.held.borrow().get(connector)?;
        Some(self.shared().then(|| Fence {
            host: self.host.clone(),
            token,
        }))
    }

    /// Changes whenever the set of held leases changes.
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<String, i64>> {
        self.held.subscribe()
    }

    pub fn state(&self) -> LeaseState {
        self.state.lock().expect("lease state poisoned").clone()
    }

    /// A run's commit was refused: its lease had gone to another host.
    pub fn note_lost(&self) {
        self.state.lock().expect("lease state poisoned").lost_total += 1;
        self.kick();
    }

    /// Asks for a round now (a reload changed the connectors).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// One round for `connectors`, never giving back those in `running`.
    pub async fn round(&self, connectors: Vec<String>, running: Vec<String>) -> Result<()> {
        self.round_with(connectors, running, false).await
    }

    /// The first round of `dphost run`: this host shows itself, and takes
    /// its share a third of a lease time later, once hosts started at the
    /// same moment have shown themselves too.
    pub async fn join(&self, connectors: Vec<String>) -> Result<()> {
        self.round_with(connectors, Vec::new(), self.shared()).await
    }

    async fn round_with(
        &self,
        connectors: Vec<String>,
        running: Vec<String>,
        join_only: bool,
    ) -> Result<()> {
        let req = LeaseRequest {
            host: self.host.clone(),
            connectors,
            running,
            ttl_ms: self.ttl.as_millis() as i64,
            greedy: self.greedy,
            join_only,
        };
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || store.lease_round(&req)).await?;
        let before = self.held.borrow().clone();
        let mut state = self.state.lock().expect("lease state poisoned");
        match result {
            Ok(round) => {
                *self.last_ok.lock().expect("lease clock poisoned") = Instant::now();
                let gained: Vec<&String> = round
                    .held
                    .keys()
                    .filter(|c| before.get(*c) != round.held.get(*c))
                    .collect();
                let gone: Vec<&String> = before
                    .keys()
                    .filter(|c| !round.held.contains_key(*c))
                    .collect();
                if self.shared() {
                    if !gained.is_empty() {
                        tracing::info!(
                            host = %self.host,
                            "took the lease of {} connector(s): {} ({} host(s) share the store; this host's share is {})",
                            gained.len(),
                            list(&gained),
                            round.hosts,
                            round.share
                        );
                    }
                    if !gone.is_empty() {
                        tracing::info!(
                            host = %self.host,
                            "gave up or lost the lease of {} connector(s): {} (another host runs them)",
                            gone.len(),
                            list(&gone)
                        );
                    }
                }
                state.acquired_total += gained.len() as u64;
                state.released_total += gone.len() as u64;
                state.held = round.held.clone();
                state.hosts = round.hosts;
                state.share = round.share;
                state.last_error = None;
                drop(state);
                self.held.send_if_modified(|h| {
                    let changed = *h != round.held;
                    *h = round.held;
                    changed
                });
                Ok(())
            }
            Err(e) => {
                state.last_error = Some(format!("{e:#}"));
                // Cut off for a whole lease time: the others may hold these
                // connectors by now; stop running them (commits would be
                // refused anyway).
                let since = self.last_ok.lock().expect("lease clock poisoned").elapsed();
                if since >= self.ttl && !before.is_empty() && self.shared() {
                    tracing::warn!(
                        host = %self.host,
                        "the connector leases could not be renewed for {:.0?}: this host stops running its {} connector(s) until it reaches the store again",
                        since,
                        before.len()
                    );
                    state.lost_total += before.len() as u64;
                    state.held.clear();
                    drop(state);
                    self.held.send_replace(BTreeMap::new());
                }
                Err(e)
            }
        }
    }

    /// Rounds every third of the lease time (or when kicked), until `stop`.
    /// `wanted` gives the connectors and the running ones at each round.
    pub async fn keep(
        self: Arc<Self>,
        wanted: impl Fn() -> (Vec<String>, Vec<String>) + Send + 'static,
        mut stop: watch::Receiver<bool>,
    ) {
        let every = self.ttl / 3;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.kick.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let (connectors, running) = wanted();
            if let Err(e) = self.round(connectors, running).await {
                tracing::warn!(host = %self.host, "cannot renew the connector leases: {e:#}; retrying in {every:.0?}");
            }
        }
    }

    /// Gives every lease back (a clean stop): the others take them at once.
    pub async fn release_all(&self) {
        if !self.shared() {
            return;
        }
        let (store, host) = (self.store.clone(), self.host.clone());
        match tokio::task::spawn_blocking(move || store.lease_release_all(&host)).await {
            Ok(Ok(())) => {
                tracing::info!(host = %self.host, "gave the connector leases back")
            }
            Ok(Err(e)) => tracing::warn!(
                host = %self.host,
                "cannot give the connector leases back: {e:#}; the other hosts take them over when they expire"
            ),
            Err(e) => {
                tracing::warn!(host = %self.host, "cannot give the connector leases back: {e}")
            }
        }
        self.held.send_replace(BTreeMap::new());
    }
}

fn list(names: &[&String]) -> String {
    const SHOWN: usize = 10;
    let mut out: Vec<&str> = names.iter().take(SHOWN).map(|s| s.as_str()).collect();
    let more = names.len().saturating_sub(SHOWN);
    let more_text = format!("and {more} more");
    if more > 0 {
        out.push(&more_text);
    }
    out.join(", ")
}
