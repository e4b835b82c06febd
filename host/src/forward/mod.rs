//! Forwarding: ship the Syslog and Alerts indexes to a SIEM the operator
//! already runs, one `[[output]]` at a time (`syslog`: RFC 5424 over TCP or
//! TLS; `ndjson`: rotated files for file-tailing shippers).
//!
//! Each output runs as its own task inside `dphost run` and keeps, per index,
//! a durable cursor in the store (`forward_cursors`): the `change_seq` of
//! the last record the destination accepted. `change_seq` grows with every
//! insert and every upsert (an updated alert is shipped again), in commit
//! order, and is never reused (see `store::migrate_forwarding`).
//!
//! Delivery is **at least once**: a batch is read after the cursor, handed to
//! the destination, and the cursor moves only once the destination accepted
//! all of it (syslog: written, flushed and acknowledged by the receiver's TCP
//! stack; ndjson: written and fsynced). A crash or an outage between the
//! hand-over and the cursor update sends that batch again, so the SIEM may
//! see a record twice (deduplicate on `event_id` / `alert.id`), never zero
//! times. While a destination is down the output retries with a backoff
//! (0.5 s doubling to 30 s) and records simply wait in the store.

pub mod ndjson;
pub mod syslog;

use crate::config::{OutputConfig, OutputKind};
use crate::store::{ForwardRecord, Index, Store};
use anyhow::{Context, Result};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Most records handed to a destination at once.
pub const BATCH_RECORDS: usize = 500;
/// How often an idle output looks for new records.
const POLL: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A destination: `deliver` returns Ok only once all of the batch is accepted.
enum Sink {
    Syslog(syslog::SyslogSender),
    Ndjson(Option<ndjson::NdjsonWriter>),
}

impl Sink {
    fn new(output: &OutputConfig) -> Sink {
        match &output.kind {
            OutputKind::Syslog(cfg) => Sink::Syslog(syslog::SyslogSender::new(cfg.clone())),
            OutputKind::Ndjson(cfg) => {
                Sink::Ndjson(Some(ndjson::NdjsonWriter::new(&output.name, cfg.clone())))
            }
        }
    }

    async fn deliver(&mut self, batch: Vec<ForwardRecord>) -> Result<()> {
        match self {
            Sink::Syslog(s) => s.deliver(&batch).await,
            Sink::Ndjson(slot) => {
                // File IO blocks: do it off the async workers.
                let mut w = slot.take().context("the ndjson writer was lost")?;
                let (w, r) = tokio::task::spawn_blocking(move || {
                    let r = w.deliver(&batch);
                    (w, r)
                })
                .await
                .context("the ndjson writer panicked")?;
                *slot = Some(w);
                r
            }
        }
    }

    /// Called when there is nothing to send: time-based rotation.
    async fn idle(&mut self) -> Result<()> {
        match self {
            Sink::Syslog(_) => Ok(()),
            Sink::Ndjson(slot) => {
                let mut w = slot.take().context("the ndjson writer was lost")?;
                let (w, r) = tokio::task::spawn_blocking(move || {
                    let r = w.rotate_if_due();
                    (w, r)
                })
                .await
                .context("the ndjson writer panicked")?;
                *slot = Some(w);
                r
            }
        }
    }

    /// After a failure: drop the connection / file handle, start afresh.
    fn reset(&mut self) {
        match self {
            Sink::Syslog(s) => s.disconnect(),
            Sink::Ndjson(Some(w)) => w.close(),
            Sink::Ndjson(None) => {}
        }
    }
}

/// The next records `output` has to send: across its indexes, in change
/// order, at most `limit`.
pub fn next_batch(
    store: &Store,
    output: &OutputConfig,
    limit: usize,
) -> Result<Vec<ForwardRecord>> {
    let mut all = Vec::new();
    for &index in &output.indexes {
        let cursor = store.forward_cursor(&output.name, index)?;
        all.extend(store.forward_after(index, cursor, limit)?);
    }
    all.sort_by_key(|r| r.change_seq);
    all.truncate(limit);
    Ok(all)
}

/// For each index in `batch`, the last change it holds.
fn cursors_after(batch: &[ForwardRecord]) -> Vec<(Index, i64)> {
    let mut out: Vec<(Index, i64)> = Vec::new();
    for r in batch {
        match out.iter_mut().find(|(i, _)| *i == r.index) {
            Some((_, seq)) => *seq = (*seq).max(r.change_seq),
            None => out.push((r.index, r.change_seq)),
        }
    }
    out
}

/// Sends one batch and moves the cursor. Ok(records delivered).
async fn step(store: &Arc<Store>, output: &OutputConfig, sink: &mut Sink) -> Result<usize> {
    let batch = {
        let (store, output) = (store.clone(), output.clone());
        tokio::task::spawn_blocking(move || next_batch(&store, &output, BATCH_RECORDS))
            .await
            .context("reading the store panicked")?
            .context("reading the records to forward")?
    };
    if batch.is_empty() {
        sink.idle().await?;
        return Ok(0);
    }
    let n = batch.len();
    let cursors = cursors_after(&batch);
    sink.deliver(batch).await?;
    let (store, name) = (store.clone(), output.name.clone());
    tokio::task::spawn_blocking(move || store.forward_advance(&name, &cursors, n as u64))
        .await
        .context("writing the cursor panicked")??;
    Ok(n)
}

/// One output's loop, until `stop` turns true. A batch in progress is
/// finished (or, past the scheduler's grace period, cancelled: it is then
/// sent again on the next start).
pub async fn run_output(store: Arc<Store>, output: OutputConfig, mut stop: watch::Receiver<bool>) {
    tracing::info!(output = %output.name, "forwarding {} to {}", indexes_label(&output), output.destination());
    let mut sink = Sink::new(&output);
    let mut backoff = BACKOFF_MIN;
    let mut failing = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let wait = match step(&store, &output, &mut sink).await {
            Ok(n) => {
                if failing {
                    failing = false;
                    tracing::info!(output = %output.name, "delivering to {} again", output.destination());
                    keep_error(&store, &output.name, None).await;
                }
                backoff = BACKOFF_MIN;
                if n > 0 {
                    tracing::debug!(output = %output.name, "forwarded {n} record(s)");
                    continue;
                }
                POLL
            }
            Err(e) => {
                sink.reset();
                failing = true;
                let msg = format!("{e:#}");
                tracing::warn!(
                    output = %output.name,
                    "cannot forward to {}: {msg}; records wait in the store, retrying in {:.1?}",
                    output.destination(),
                    backoff
                );
                keep_error(&store, &output.name, Some(msg)).await;
                let wait = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Records (or clears) the output's last error in the store, for status.
async fn keep_error(store: &Arc<Store>, output: &str, error: Option<String>) {
    let (store, name) = (store.clone(), output.to_string());
    let r = tokio::task::spawn_blocking(move || store.forward_error(&name, error.as_deref())).await;
    if let Ok(Err(e)) | Err(e) = r.map_err(anyhow::Error::from) {
        tracing::warn!(output = %output, "cannot keep the output's state in the store: {e:#}");
    }
}

fn indexes_label(output: &OutputConfig) -> String {
    let names: Vec<&str> = output.indexes.iter().map(|i| i.as_str()).collect();
    format!("the {} index(es)", names.join(" and "))
}

/// Where one output stands in one index.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IndexLag {
    pub index: &'static str,
    /// `change_seq` of the last record the destination accepted (0: none).
    pub cursor: i64,
    /// Records written or updated after the cursor: not delivered yet.
    pub pending: u64,
    /// How long the oldest pending record has been waiting (ms), if any.
    pub lag_ms: Option<i64>,
}

/// One output as `dphost status` and the metrics show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OutputStatus {
    pub name: String,
    pub kind: &'static str,
    pub destination: String,
    pub indexes: Vec<IndexLag>,
    /// Sum over the indexes.
    pub pending: u64,
    /// The largest `lag_ms` over the indexes.
    pub lag_ms: Option<i64>,
    /// Records accepted by the destination so far (re-sends included).
    pub delivered: u64,
    pub last_delivery_ms: Option<i64>,
    /// The last failure, until a delivery succeeds again.
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
}

/// Per output: cursor, pending records and lag, deliveries and last error,
/// read from the store (works from any process, `dphost run` or not).
pub fn output_status(
    store: &Store,
    outputs: &[OutputConfig],
    now_ms: i64,
) -> Result<Vec<OutputStatus>> {
    outputs
        .iter()
        .map(|o| {
            let mut indexes = Vec::new();
            for &index in &o.indexes {
                let p = store.forward_position(&o.name, index)?;
                indexes.push(IndexLag {
                    index: index.as_str(),
                    cursor: p.cursor,
                    pending: p.pending,
                    lag_ms: p.oldest_pending_ms.map(|t| (now_ms - t).max(0)),
                });
            }
            let activity = store.forward_activity(&o.name)?;
            Ok(OutputStatus {
                name: o.name.clone(),
                kind: match o.kind {
                    OutputKind::Syslog(_) => "syslog",
                    OutputKind::Ndjson(_) => "ndjson",
                },
                destination: o.destination(),
                pending: indexes.iter().map(|i| i.pending).sum(),
                lag_ms: indexes.iter().filter_map(|i| i.lag_ms).max(),
                indexes,
                delivered: activity.delivered,
                last_delivery_ms: activity.last_delivery_ms,
                last_error: activity.last_error,
                last_error_ms: activity.last_error_ms,
            })
        })
        .collect()
}

/// A record body on one line (JSON allows newlines only as whitespace
/// between tokens; the stored bodies are compact, this makes sure).
pub(crate) fn one_line(body: &str) -> std::borrow::Cow<'_, str> {
    if !body.contains(['\n', '\r']) {
        return body.into();
    }
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => v.to_string().into(),
        Err(_) => body.replace(['\n', '\r'], " ").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NdjsonOutput;
    use crate::store::{Batch, NewRecord, Owner, WriteMode};

    fn commit(store: &Store, records: &[(Index, &str, &str, WriteMode)]) {
        let batch = Batch {
            records: records
                .iter()
                .map(|(index, id, body, mode)| NewRecord {
                    index: *index,
                    id: id.to_string(),
                    body: body.to_string(),
                    mode: *mode,
                })
                .collect(),
            ..Default::default()
        };
        let owner = Owner {
            connector: "c1".into(),
            tenant: "t1".into(),
            fence: None,
        };
        store.commit(&owner, &batch).unwrap();
    }

    fn output(indexes: Vec<Index>) -> OutputConfig {
        OutputConfig {
            name: "out".into(),
            indexes,
            kind: OutputKind::Ndjson(NdjsonOutput {
                dir: "/nonexistent".into(),
                rotate_bytes: 1 << 20,
                rotate_secs: 3600,
            }),
        }
    }

    fn ids(batch: &[ForwardRecord]) -> Vec<String> {
        batch.iter().map(|r| r.id.clone()).collect()
    }

    #[test]
    fn cursor_follows_changes_across_indexes_and_ships_updated_alerts_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let out = output(vec![Index::Syslog, Index::Alerts]);
        commit(
            &store,
            &[
                (Index::Syslog, "e1", r#"{"n":1}"#, WriteMode::Insert),
                (Index::Alerts, "a1", r#"{"count":1}"#, WriteMode::Upsert),
                (Index::Quarantine, "q1", r#"{}"#, WriteMode::Insert),
                (Index::Syslog, "e2", r#"{"n":2}"#, WriteMode::Insert),
            ],
        );
        let batch = next_batch(&store, &out, 2).unwrap();
        assert_eq!(ids(&batch), ["e1", "a1"]);
        store
            .forward_advance("out", &cursors_after(&batch), 2)
            .unwrap();
        let batch = next_batch(&store, &out, 10).unwrap();
        assert_eq!(ids(&batch), ["e2"], "quarantine is not forwarded");
        store
            .forward_advance("out", &cursors_after(&batch), 1)
            .unwrap();
        assert!(next_batch(&store, &out, 10).unwrap().is_empty());

        // A duplicate insert is not a change; an upsert is.
        commit(
            &store,
            &[
                (Index::Syslog, "e1", r#"{"n":1}"#, WriteMode::Insert),
                (Index::Alerts, "a1", r#"{"count":2}"#, WriteMode::Upsert),
            ],
        );
        let batch = next_batch(&store, &out, 10).unwrap();
        assert_eq!(ids(&batch), ["a1"]);
        assert_eq!(batch[0].body, r#"{"count":2}"#);
        // Upserting the same body again is no change either.
        commit(
            &store,
            &[(Index::Alerts, "a1", r#"{"count":2}"#, WriteMode::Upsert)],
        );
        assert_eq!(
            next_batch(&store, &out, 10).unwrap()[0].change_seq,
            batch[0].change_seq
        );

        let status =
            output_status(&store, std::slice::from_ref(&out), crate::store::now_ms()).unwrap();
        assert_eq!(status[0].pending, 1);
        assert_eq!(status[0].delivered, 3);
        assert_eq!(status[0].indexes[0].pending, 0);
        assert_eq!(status[0].indexes[1].pending, 1);
        assert!(status[0].lag_ms.is_some());

        // Another output has its own cursor; reopening keeps both.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(next_batch(&store, &out, 10).unwrap().len(), 1);
        let mut other = output(vec![Index::Alerts]);
        other.name = "other".into();
        assert_eq!(ids(&next_batch(&store, &other, 10).unwrap()), ["a1"]);
    }

    #[test]
    fn errors_are_kept_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let out = output(vec![Index::Syslog]);
        store
            .forward_error("out", Some("connection refused"))
            .unwrap();
        let s = output_status(&store, std::slice::from_ref(&out), 0).unwrap();
        assert_eq!(s[0].last_error.as_deref(), Some("connection refused"));
        store.forward_error("out", None).unwrap();
        let s = output_status(&store, &[out], 0).unwrap();
        assert_eq!(s[0].last_error, None);
    }

    #[test]
    fn bodies_become_one_line() {
        assert_eq!(one_line(r#"{"a":1}"#), r#"{"a":1}"#);
        assert_eq!(one_line("{\"a\":\n 1}"), r#"{"a":1}"#);
    }
}
