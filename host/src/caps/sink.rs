//! `dphost:connector/sink`: the atomic, idempotent way into the data lake.
//!
//! A batch (records + outbox actions + state changes) is checked against the
//! connector's limits and then committed as one store transaction on a
//! blocking thread, either while the component waits (`commit`) or while it
//! goes on (`commit-begin`, then `commit-wait`: one batch in flight at a
//! time, and every read waits for it). The owner (connector instance,
//! tenant) comes from the host, never from the component.

use crate::bindings::dphost::connector::{sink, types};
use crate::config::{Limits, LogFilter};
use crate::runtime::RunState;
use crate::store::{self, Index, WriteMode};
use wasmtime::component::{HasSelf, Linker};

/// Longest record id, action id or state key.
const MAX_ID_BYTES: usize = 512;
/// Largest single state value.
const MAX_STATE_VALUE_BYTES: usize = 1 << 20;
/// Most ids one `contains` call may ask about.
const MAX_CONTAINS_IDS: usize = 100_000;

pub fn link(linker: &mut Linker<RunState>) -> anyhow::Result<()> {
    sink::add_to_linker::<_, HasSelf<RunState>>(linker, |s| s)?;
    Ok(())
}

/// What this run's commits did, for the run summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct SinkStats {
    pub commits: u32,
    pub written: u64,
    pub duplicates: u64,
    pub actions_queued: u64,
    pub filtered: u64,
    pub rejected: u32,
}

/// A batch `commit-begin` handed to a blocking thread, and the outcome of
/// the last one once it is written (until `commit-wait` collects it).
#[derive(Default)]
pub struct CommitPipe {
    in_flight: Option<InFlight>,
    settled: Option<Result<types::CommitOutcome, String>>,
}

struct InFlight {
    write: tokio::task::JoinHandle<anyhow::Result<store::CommitOutcome>>,
    /// Records the log filters dropped from it.
    filtered: u32,
}

impl RunState {
    /// Checks a batch and applies the log filters: what a commit writes.
    fn prepare_batch(&mut self, batch: types::Batch) -> Result<(store::Batch, u32), String> {
        match check_batch(batch, &self.scope.limits) {
            Ok(mut b) => {
                let before = b.records.len();
                let filters = &self.scope.filters;
                b.records
                    .retain(|r| r.index != Index::Syslog || !dropped_by(filters, &r.body));
                let filtered = (before - b.records.len()) as u32;
                self.sink.filtered += u64::from(filtered);
                Ok((b, filtered))
            }
            Err(why) => {
                self.sink.rejected += 1;
                tracing::warn!(connector = %self.scope.connector, "batch rejected: {why}");
                Err(why)
            }
        }
    }

    /// Writes a batch on a blocking thread (a commit may write thousands of
    /// rows; the runtime's threads go on with other runs).
    fn spawn_write(
        &self,
        batch: store::Batch,
    ) -> tokio::task::JoinHandle<anyhow::Result<store::CommitOutcome>> {
        let scope = self.scope.clone();
        tokio::task::spawn_blocking(move || {
            scope.store.commit(
                &store::Owner {
                    connector: scope.connector.clone(),
                    tenant: scope.tenant.clone(),
                    fence: scope.fence.clone(),
                },
                &batch,
            )
        })
    }

    /// The outcome of a written batch, as the component sees it.
    fn outcome(
        &mut self,
        result: anyhow::Result<store::CommitOutcome>,
        filtered: u32,
    ) -> wasmtime::Result<Result<types::CommitOutcome, String>> {
        Ok(match result {
            Ok(o) => {
                self.sink.commits += 1;
                self.sink.written += o.written as u64;
                self.sink.duplicates += o.duplicates as u64;
                self.sink.actions_queued += o.actions_queued as u64;
                Ok(types::CommitOutcome {
                    written: o.written,
                    duplicates: o.duplicates,
                    actions_queued: o.actions_queued,
                    filtered,
                })
            }
            // Another host holds the connector now: this run must stop
            // here (nothing more of it may land), not retry.
            Err(e) => {
                if let Some(lost) = crate::store::Store::lease_lost(&e) {
                    tracing::warn!(connector = %self.scope.connector, "commit refused: {lost}");
                    return Err(wasmtime::Error::new(lost.clone()));
                }
                // A storage failure is not the component's fault, but the
                // component must know nothing was written so it keeps its place.
                Err(format!(
                    "the host could not store the batch: {e:#} (nothing of it was written; {})",
                    crate::store::storage_advice(&e)
                ))
            }
        })
    }

    /// Waits for the batch in flight, if any; its outcome waits for
    /// `commit-wait`.
    pub async fn settle_commit(&mut self) -> wasmtime::Result<()> {
        if let Some(f) = self.commits.in_flight.take() {
            let result = f
                .write
                .await
                .map_err(|e| wasmtime::Error::msg(format!("commit task failed: {e}")))?;
            // A lost lease ends the run here (the error), whoever waits.
            let outcome = self.outcome(result, f.filtered)?;
            self.commits.settled = Some(outcome);
        }
        Ok(())
    }

    /// An outcome `commit-wait` never collected: the failure of a batch the
    /// run ended with.
    pub fn uncollected_commit_failure(&mut self) -> Option<String> {
        match self.commits.settled.take() {
            Some(Err(why)) => Some(why),
            _ => None,
        }
    }
}

impl sink::Host for RunState {
    async fn commit(
        &mut self,
        batch: types::Batch,
    ) -> wasmtime::Result<Result<types::CommitOutcome, String>> {
        self.settle_commit().await?;
        let (batch, filtered) = match self.prepare_batch(batch) {
            Ok(b) => b,
            Err(why) => return Ok(Err(why)),
        };
        let result = self
            .spawn_write(batch)
            .await
            .map_err(|e| wasmtime::Error::msg(format!("commit task failed: {e}")))?;
        self.outcome(result, filtered)
    }

    fn commit_begin(&mut self, batch: types::Batch) -> wasmtime::Result<Result<(), String>> {
        if self.commits.in_flight.is_some() || self.commits.settled.is_some() {
            return Ok(Err(
                "a batch is already in flight: collect its outcome with commit-wait before beginning the next".into(),
            ));
        }
        let (batch, filtered) = match self.prepare_batch(batch) {
            Ok(b) => b,
            Err(why) => return Ok(Err(why)),
        };
        let write = self.spawn_write(batch);
        self.commits.in_flight = Some(InFlight { write, filtered });
        Ok(Ok(()))
    }

    async fn commit_wait(
        &mut self,
    ) -> wasmtime::Result<Option<Result<types::CommitOutcome, String>>> {
        self.settle_commit().await?;
        Ok(self.commits.settled.take())
    }

    async fn contains(
        &mut self,
        index: types::Index,
        ids: Vec<String>,
    ) -> wasmtime::Result<Vec<bool>> {
        if ids.len() > MAX_CONTAINS_IDS {
            return Err(wasmtime::Error::msg(format!(
                "sink.contains asked about {} ids; at most {MAX_CONTAINS_IDS} per call",
                ids.len()
            )));
        }
        self.settle_commit().await?;
        self.scope
            .store
            .contains(&self.scope.connector, to_store_index(index), &ids)
            .map_err(|e| super::store_failure(e, "look up records"))
    }

    async fn dropped_by_filters(&mut self, bodies: Vec<String>) -> wasmtime::Result<Vec<bool>> {
        if bodies.len() > MAX_CONTAINS_IDS {
            return Err(wasmtime::Error::msg(format!(
                "sink.dropped-by-filters got {} bodies; at most {MAX_CONTAINS_IDS} per call",
                bodies.len()
            )));
        }
        self.settle_commit().await?;
        Ok(bodies
            .iter()
            .map(|b| dropped_by(&self.scope.filters, b))
            .collect())
    }
}

/// Whether any of the connector's log filters drops this record body.
fn dropped_by(filters: &[LogFilter], body: &str) -> bool {
    if filters.is_empty() {
        return false;
    }
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => filters.iter().any(|f| f.drop.matches(&v)),
        Err(_) => false,
    }
}

fn to_store_index(i: types::Index) -> Index {
    match i {
        types::Index::Syslog => Index::Syslog,
        types::Index::Alerts => Index::Alerts,
        types::Index::Quarantine => Index::Quarantine,
    }
}

/// Checks a batch against the limits and converts it. The whole batch is
/// refused on the first problem: a partial write would break atomicity.
fn check_batch(batch: types::Batch, limits: &Limits) -> Result<store::Batch, String> {
    let items = batch.records.len() + batch.actions.len();
    if items > limits.max_batch_records {
        return Err(format!(
            "the batch has {items} records and actions; the limit is {} per commit (limits.max_batch_records): commit in smaller batches",
            limits.max_batch_records
        ));
    }
    let bytes: usize = batch
        .records
        .iter()
        .map(|r| r.body.len() + r.id.len())
        .sum();
    let max_bytes = (limits.max_batch_mib as usize) << 20;
    if bytes > max_bytes {
        return Err(format!(
            "the batch carries {bytes} bytes of records; the limit is {max_bytes} (limits.max_batch_mib): commit in smaller batches"
        ));
    }
    let mut records = Vec::with_capacity(batch.records.len());
    for (i, r) in batch.records.into_iter().enumerate() {
        check_id("record id", &r.id, i)?;
        if !r.body.trim_start().starts_with('{') {
            return Err(format!(
                "record #{i} (id `{}`): the body is not a JSON object",
                r.id
            ));
        }
        if let Err(e) = serde_json::from_str::<Readable>(&r.body) {
            return Err(if e.to_string().starts_with("recursion limit exceeded") {
                format!(
                    "record #{i} (id `{}`): the body is nested more than {MAX_JSON_DEPTH} levels deep, more than search can read: keep such data as text",
                    r.id
                )
            } else {
                format!(
                    "record #{i} (id `{}`): the body is not a JSON object search can read ({e})",
                    r.id
                )
            });
        }
        records.push(store::NewRecord {
            index: to_store_index(r.index),
            id: r.id,
            body: r.body,
            mode: match r.mode {
                types::WriteMode::Insert => WriteMode::Insert,
                types::WriteMode::Upsert => WriteMode::Upsert,
            },
        });
    }
    let mut actions = Vec::with_capacity(batch.actions.len());
    for (i, a) in batch.actions.into_iter().enumerate() {
        check_id("action id", &a.id, i)?;
        if a.kind.is_empty() || a.target.is_empty() {
            return Err(format!(
                "action #{i} (id `{}`): kind and target are required",
                a.id
            ));
        }
        let params = if a.params.trim().is_empty() {
            "{}".to_string()
        } else {
            a.params
        };
        if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&params).is_err() {
            return Err(format!(
                "action #{i} (id `{}`): params is not a JSON object",
                a.id
            ));
        }
        actions.push(store::NewAction {
            id: a.id,
            kind: a.kind,
            target: a.target,
            reason: a.reason,
            params,
        });
    }
    for (i, (key, value)) in batch.state.iter().enumerate() {
        check_id("state key", key, i)?;
        if value
            .as_ref()
            .is_some_and(|v| v.len() > MAX_STATE_VALUE_BYTES)
        {
            return Err(format!(
                "state key `{key}`: the value is larger than {MAX_STATE_VALUE_BYTES} bytes"
            ));
        }
    }
    Ok(store::Batch {
        records,
        actions,
        state: batch.state,
    })
}

/// Deepest nesting a record body may have: search reads bodies with
/// serde_json, which stops there.
const MAX_JSON_DEPTH: usize = 127;

/// A record body read the way search reads it (serde_json, whose nesting
/// limit and number range it keeps), in one pass and without building it.
struct Readable;

impl<'de> serde::Deserialize<'de> for Readable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Readable, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Readable;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<Readable, E> {
                Ok(Readable)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Readable, E> {
                Ok(Readable)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Readable, E> {
                Ok(Readable)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Readable, E> {
                Ok(Readable)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Readable, E> {
                Ok(Readable)
            }
            fn visit_str<E>(self, _: &str) -> Result<Readable, E> {
                Ok(Readable)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Readable, A::Error> {
                while seq.next_element::<Readable>()?.is_some() {}
                Ok(Readable)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Readable, A::Error> {
                while map.next_key::<Readable>()?.is_some() {
                    map.next_value::<Readable>()?;
                }
                Ok(Readable)
            }
        }
        d.deserialize_any(Visit)
    }
}

fn check_id(what: &str, id: &str, i: usize) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(format!(
            "{what} #{i} must be 1 to {MAX_ID_BYTES} bytes long"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, body: &str) -> types::Record {
        types::Record {
            index: types::Index::Syslog,
            id: id.into(),
            body: body.into(),
            mode: types::WriteMode::Insert,
        }
    }

    #[test]
    fn limits_and_malformed_records_refuse_the_whole_batch() {
        let limits = Limits {
            max_batch_records: 2,
            ..Limits::default()
        };
        let ok = types::Batch {
            records: vec![record("a", "{}"), record("b", r#"{"x":1}"#)],
            actions: vec![],
            state: vec![("checkpoint".into(), Some(b"1".to_vec()))],
        };
        assert_eq!(check_batch(ok.clone(), &limits).unwrap().records.len(), 2);

        let mut too_many = ok.clone();
        too_many.records.push(record("c", "{}"));
        assert!(check_batch(too_many, &limits)
            .unwrap_err()
            .contains("max_batch_records"));

        let mut not_json = ok.clone();
        not_json.records[1].body = "[1,2]".into();
        assert!(check_batch(not_json, &limits)
            .unwrap_err()
            .contains("not a JSON object"));

        // Exactly what search (serde_json) reads: 127 levels, not 128.
        let nested = |levels: usize| {
            let mut b = ok.clone();
            b.records[1].body = format!("{}1{}", "{\"x\":".repeat(levels), "}".repeat(levels));
            b
        };
        assert!(check_batch(nested(127), &limits).is_ok());
        let readable: serde_json::Result<serde_json::Value> =
            serde_json::from_str(&nested(127).records[1].body);
        assert!(readable.is_ok());
        assert!(check_batch(nested(128), &limits)
            .unwrap_err()
            .contains("nested more than 127 levels deep"));
        assert!(serde_json::from_str::<serde_json::Value>(&nested(128).records[1].body).is_err());
        // A number search cannot read is refused too.
        let mut huge = ok.clone();
        huge.records[1].body = r#"{"x":1e999}"#.into();
        assert!(check_batch(huge, &limits)
            .unwrap_err()
            .contains("not a JSON object search can read"));

        let mut empty_id = ok;
        empty_id.records[0].id.clear();
        assert!(check_batch(empty_id, &limits)
            .unwrap_err()
            .contains("record id"));
    }
}
