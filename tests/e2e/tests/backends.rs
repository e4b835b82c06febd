//! The SQLite and PostgreSQL backends side by side: the same records, the
//! same queries, the same answers (search and log filters use the query
//! language on both); the same sequences of state, budget, outbox, run
//! history and forwarding calls give the same results.

use anyhow::Result;
use dphost::search::Query;
use dphost::store::{
    Batch, Index, NewAction, NewRecord, Owner, PgOptions, RunRecord, Store, WriteMode,
};
use e2e::pg;
use serde_json::json;

fn postgres() -> Result<Store> {
    let server = pg::server()?;
    let db = server.new_database()?;
    Store::postgres(&PgOptions {
        url: server.url(&db),
        password: Some(pg::PASSWORD.to_string()),
        lease_secs: 30,
    })
}

fn owner(connector: &str, tenant: &str) -> Owner {
    Owner {
        connector: connector.into(),
        tenant: tenant.into(),
        fence: None,
    }
}

/// Bodies that exercise what the stores push down to SQL: case, non-ASCII,
/// LIKE's wildcards, numbers, booleans, lists, objects, nulls and missing
/// fields under the indexed paths, and odd timestamps.
fn corpus() -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let senders = [
        json!("Bad@Evil.example"),
        json!("bad@evil.example"),
        json!("ÄRGER@Évil.example"),
        json!("ärger@évil.example"),
        json!(["bad@evil.example", "x@y.example"]),
        json!(null),
        json!(42),
        json!(true),
    ];
    let classes = [
        json!("proofpoint_tap_event"),
        json!("Proofpoint_TAP_Event"),
        json!("proofpoint_tap_alert"),
        json!(7),
        json!(false),
        json!({"nested": "proofpoint_tap_event"}),
    ];
    let times = [
        json!(1_700_000_000_000i64),
        json!(1_700_000_100_000i64),
        json!(1_700_000_000_000.5),
        json!("2023-11-14T22:13:20Z"),
        json!(null),
        json!(true),
        json!([1]),
    ];
    let types = [
        "messageDelivered",
        "MESSAGEDELIVERED",
        "clickBlocked",
        "100%_done",
    ];
    let mut n = 0;
    for (i, sender) in senders.iter().enumerate() {
        for (j, class) in classes.iter().enumerate() {
            n += 1;
            let mut body = json!({
                "msg_class": class,
                "event_type": types[(i + j) % types.len()],
                "timestamp": times[n % times.len()],
                "email": {"sender": {"address": sender},
                          "subject": format!("Invoice {n} 100% due_now ÜBER")},
                "n": n,
            });
            if n % 5 == 0 {
                body.as_object_mut().unwrap().remove("msg_class");
            }
            if n % 7 == 0 {
                body.as_object_mut().unwrap().remove("timestamp");
            }
            out.push(body);
        }
    }
    out
}

fn fill(store: &Store) -> Result<()> {
    let bodies = corpus();
    for (k, chunk) in bodies.chunks(10).enumerate() {
        let (c, t) = if k % 2 == 0 {
            ("c1", "t1")
        } else {
            ("c2", "t2")
        };
        let records = chunk
            .iter()
            .map(|b| NewRecord {
                index: Index::Syslog,
                id: format!("r{}", b["n"]),
                body: b.to_string(),
                mode: WriteMode::Insert,
            })
            .collect();
        store.commit(
            &owner(c, t),
            &Batch {
                records,
                ..Default::default()
            },
        )?;
    }
    Ok(())
}

/// (connector, id, body) of what `dphost search` would print.
fn search(
    store: &Store,
    query: &str,
    tenant: Option<&str>,
    since: Option<i64>,
    until: Option<i64>,
) -> Result<Vec<(String, String, String)>> {
    let q = Query::parse(query)?;
    let filter = q.scan_filter(tenant.map(str::to_string), since, until);
    let mut out = Vec::new();
    store.scan(Index::Syslog, &filter, |r| {
        let body: serde_json::Value = serde_json::from_str(&r.body)?;
        if q.matches(&body) {
            out.push((r.connector, r.id, r.body));
        }
        Ok(true)
    })?;
    Ok(out)
}

/// A query with its tenant, since and until.
type Case<'a> = (&'a str, Option<&'a str>, Option<i64>, Option<i64>);

#[test]
fn search_gives_the_same_records_on_sqlite_and_postgres() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let sqlite = Store::open(dir.path())?;
    let pg = postgres()?;
    fill(&sqlite)?;
    fill(&pg)?;
    let t0 = 1_700_000_000_000i64;
    let cases: Vec<Case> = vec![
        ("*", None, None, None),
        ("msg_class:proofpoint_tap_event", None, None, None),
        ("msg_class:PROOFPOINT_TAP_EVENT", None, None, None),
        ("msg_class:7", None, None, None),
        ("msg_class:false", None, None, None),
        ("msg_class:*", None, None, None),
        ("NOT msg_class:*", None, None, None),
        ("event_type:messageDelivered", None, None, None),
        ("event_type:\"100%_done\"", None, None, None),
        ("email.sender.address:bad@evil.example", None, None, None),
        ("email.sender.address:ärger@évil.example", None, None, None),
        ("email.sender.address:ÄRGER@ÉVIL.EXAMPLE", None, None, None),
        ("email.sender.address:42", None, None, None),
        ("email.sender.address:true", None, None, None),
        ("email.sender.address:*@evil.example", None, None, None),
        ("100%", None, None, None),
        ("due_now", None, None, None),
        ("über", None, None, None),
        (
            "invoice AND msg_class:proofpoint_tap_alert",
            None,
            None,
            None,
        ),
        ("event_type:clickBlocked OR n:3", None, None, None),
        ("-event_type:clickBlocked", Some("t2"), None, None),
        ("*", Some("t1"), Some(t0), None),
        ("*", None, Some(t0 + 1), None),
        ("*", None, None, Some(t0 + 1)),
        ("*", None, Some(t0), Some(t0 + 100_000)),
        (
            "msg_class:proofpoint_tap_event",
            Some("t1"),
            Some(t0),
            Some(t0 + 200_000),
        ),
    ];
    let mut nonempty = 0;
    for (q, tenant, since, until) in &cases {
        let a = search(&sqlite, q, *tenant, *since, *until)?;
        let b = search(&pg, q, *tenant, *since, *until)?;
        assert_eq!(
            a, b,
            "`{q}` (tenant {tenant:?}, since {since:?}, until {until:?}): SQLite and PostgreSQL differ"
        );
        if !a.is_empty() {
            nonempty += 1;
        }
    }
    // The comparison means something only if most queries find records.
    assert!(
        nonempty >= cases.len() - 3,
        "only {nonempty} queries matched anything"
    );
    assert_eq!(
        search(&pg, "*", None, None, None)?.len(),
        corpus().len(),
        "bodies come back byte for byte and all of them"
    );
    Ok(())
}

/// What a sequence of store calls shows, as text to compare.
fn exercise(store: &Store) -> Result<Vec<String>> {
    let mut seen = Vec::new();
    let o = owner("c1", "t1");
    let rec = |id: &str, body: &str, mode| NewRecord {
        index: Index::Alerts,
        id: id.into(),
        body: body.into(),
        mode,
    };
    let action = |id: &str| NewAction {
        id: id.into(),
        kind: "disable-user".into(),
        target: format!("{id}@corp.example"),
        reason: "alert".into(),
        params: json!({"ad": "corp", "alert_id": "al1", "duration_ms": 3_600_000}).to_string(),
    };
    let batch = Batch {
        records: vec![
            rec("a", r#"{"v":1}"#, WriteMode::Upsert),
            rec("b", r#"{"v":2}"#, WriteMode::Insert),
            rec("a", r#"{"v":3}"#, WriteMode::Upsert),
            rec("b", r#"{"v":4}"#, WriteMode::Insert),
        ],
        actions: vec![action("x"), action("y"), action("x")],
        state: vec![
            ("checkpoint".into(), Some(b"10".to_vec())),
            ("gone".into(), Some(b"1".to_vec())),
            ("gone".into(), None),
        ],
    };
    seen.push(format!("{:?}", store.commit(&o, &batch)?));
    seen.push(format!("{:?}", store.commit(&o, &batch)?));
    seen.push(format!("{:?}", store.state_get("c1", "checkpoint")?));
    seen.push(format!("{:?}", store.state_get("c1", "gone")?));
    seen.push(format!(
        "{:?}",
        store.contains("c1", Index::Alerts, &["a".into(), "z".into(), "b".into()])?
    ));
    let fwd: Vec<(String, String, i64)> = store
        .forward_after(Index::Alerts, 0, 10)?
        .into_iter()
        .map(|r| (r.id, r.body, r.change_seq))
        .collect();
    seen.push(format!("{fwd:?}"));
    let last = fwd.iter().map(|f| f.2).max().unwrap_or(0);
    store.forward_advance("out", &[(Index::Alerts, last)], 2)?;
    store.forward_advance("out", &[(Index::Alerts, 1)], 1)?;
    seen.push(format!(
        "{:?}",
        store.forward_position("out", Index::Alerts)?
    ));
    store.forward_error("out", Some("refused"))?;
    let act = store.forward_activity("out")?;
    seen.push(format!("{} {:?}", act.delivered, act.last_error));
    let day = 86_400_000;
    for at in [1_000, 2_000, 3_000, 4_000] {
        seen.push(format!("{:?}", store.budget_take("cred/siem", 3, day, at)?));
    }
    seen.push(format!(
        "{:?}",
        store.budget_take("cred/siem", 3, day, 1_000 + day)?
    ));
    seen.push(format!(
        "{:?}",
        store.budget_remaining("cred/siem", 3, day, 5_000)?
    ));
    seen.push(format!("{:?}", store.budget_used(0)?));
    for i in 0..205 {
        store.record_run(&RunRecord {
            connector: "c1".into(),
            tenant: "t1".into(),
            operation: if i == 3 { "collect" } else { "test-connection" }.into(),
            started_ms: i,
            ended_ms: i + 1,
            outcome: "ok".into(),
            summary: None,
            error: None,
        })?;
    }
    seen.push(format!(
        "{:?}",
        store.last_ok_collect("c1")?.map(|r| r.started_ms)
    ));
    seen.push(format!(
        "{:?}",
        store
            .newest_run("c1", &["test-connection"])?
            .map(|r| r.started_ms)
    ));
    store.set_next_run("c1", 77)?;
    seen.push(format!("{:?}", store.next_run("c1")?));
    // The outbox: claim, accounts, finish, others and hand over.
    let due = store.outbox_due(i64::MAX, 10)?;
    seen.push(format!(
        "{:?}",
        due.iter()
            .map(|a| (&a.action_id, a.attempts))
            .collect::<Vec<_>>()
    ));
    let audit = |m: &str| dphost::store::Audit {
        body: json!({"message": m}),
    };
    let (x, y) = (&due[0], &due[1]);
    seen.push(format!(
        "{}",
        store.outbox_claim(x, Some(&audit("requested")))?
    ));
    seen.push(format!("{}", store.outbox_claim(x, None)?));
    store.outbox_set_account(x, "CN=Bob,DC=corp", Some(512), "set", Some(&audit("done")))?;
    store.outbox_finish(x, "done", "done", Some(10), None)?;
    store.outbox_claim(y, None)?;
    store.outbox_set_account(y, "cn=bob,dc=corp", None, "already", None)?;
    seen.push(format!(
        "{:?}",
        store.outbox_others("corp", "CN=BOB,DC=CORP", x.seq)?
    ));
    store.outbox_hand_over(x, "CN=Bob,DC=corp", Some(512), y.seq, &audit("handed"))?;
    seen.push(format!("{:?}", store.outbox_accounts(y.seq)?));
    store.outbox_retry(y, 5, true, "refused", &audit("retry"))?;
    seen.push(format!("{:?}", store.outbox_due(4, 10)?.len()));
    seen.push(format!(
        "{:?}",
        store
            .outbox_expired(i64::MAX, 10)?
            .iter()
            .map(|a| &a.action_id)
            .collect::<Vec<_>>()
    ));
    let summary = store.outbox_summary("c1")?;
    seen.push(format!("{:?} {:?}", summary.by_outcome, summary.last));
    seen.push(format!("{}", store.count(Index::Actions, Some("c1"))?));
    Ok(seen)
}

#[test]
fn the_same_calls_give_the_same_results_on_both_backends() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let a = exercise(&Store::open(dir.path())?)?;
    let b = exercise(&postgres()?)?;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "step {i}: SQLite and PostgreSQL differ");
    }
    assert_eq!(a.len(), b.len());
    Ok(())
}

/// Two hosts (two stores on one database) taking from one pool at once
/// never take more than its limit together: a take locks the pool's row.
#[test]
fn two_hosts_never_exceed_a_shared_request_budget() -> Result<()> {
    let server = pg::server()?;
    let db = server.new_database()?;
    let open = || {
        Store::postgres(&PgOptions {
            url: server.url(&db),
            password: Some(pg::PASSWORD.to_string()),
            lease_secs: 30,
        })
    };
    let hosts = [std::sync::Arc::new(open()?), std::sync::Arc::new(open()?)];
    let limit = 100u32;
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let store = hosts[i % 2].clone();
            std::thread::spawn(move || -> Result<u32> {
                let mut taken = 0;
                for _ in 0..40 {
                    if store
                        .budget_take("cred/siem", limit, 86_400_000, 1_000)?
                        .is_ok()
                    {
                        taken += 1;
                    }
                }
                Ok(taken)
            })
        })
        .collect();
    let taken: u32 = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .sum::<Result<u32>>()?;
    assert_eq!(
        taken, limit,
        "320 attempts on two hosts: exactly the limit is taken"
    );
    assert_eq!(
        hosts[0].budget_remaining("cred/siem", limit, 86_400_000, 1_000)?,
        0
    );
    Ok(())
}

/// Leases on PostgreSQL: a fair share each, a new token for a new holder,
/// and a commit under a lost lease refused in its own transaction.
#[test]
fn leases_split_evenly_expire_and_fence_commits() -> Result<()> {
    use dphost::store::{Fence, LeaseRequest};
    let store = postgres()?;
    let names: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();
    let req = |host: &str, ttl_ms: i64, join_only: bool| LeaseRequest {
        host: host.into(),
        connectors: names.clone(),
        running: Vec::new(),
        ttl_ms,
        greedy: false,
        join_only,
    };
    // Both show themselves first, then take: 3 and 2.
    store.lease_round(&req("a", 60_000, true))?;
    store.lease_round(&req("b", 60_000, true))?;
    let a = store.lease_round(&req("a", 60_000, false))?;
    let b = store.lease_round(&req("b", 60_000, false))?;
    assert_eq!((a.hosts, a.share, a.held.len()), (2, 3, 3), "{a:?}");
    assert_eq!((b.share, b.held.len()), (3, 2), "{b:?}");
    assert!(a.held.keys().all(|c| !b.held.contains_key(c)));
    // Renewing keeps the tokens.
    let again = store.lease_round(&req("a", 60_000, false))?;
    assert_eq!(again.held, a.held);
    let (c, token) = a.held.iter().next().unwrap();
    let commit = |host: &str, token: i64| {
        store.commit(
            &Owner {
                connector: c.clone(),
                tenant: "t".into(),
                fence: Some(Fence {
                    host: host.into(),
                    token,
                }),
            },
            &Batch {
                state: vec![("k".into(), Some(host.as_bytes().to_vec()))],
                ..Default::default()
            },
        )
    };
    commit("a", *token)?;
    // a's leases run out (a short renewal), then b takes them over with new
    // tokens: a's commit is refused, b's goes through.
    store.lease_round(&req("a", 1, false))?;
    std::thread::sleep(std::time::Duration::from_millis(50));
    // a's heartbeat is still fresh, so b takes up to its share of 3 now and
    // the rest once a counts as gone; both rounds leave nothing to a.
    let b = store.lease_round(&req("b", 60_000, false))?;
    assert_eq!(b.held.len(), 3, "{b:?}");
    let taken: Vec<&String> = b.held.keys().filter(|k| a.held.contains_key(*k)).collect();
    assert!(!taken.is_empty());
    let lost = taken[0];
    let err = store
        .commit(
            &Owner {
                connector: lost.clone(),
                tenant: "t".into(),
                fence: Some(Fence {
                    host: "a".into(),
                    token: a.held[lost],
                }),
            },
            &Batch {
                state: vec![("k".into(), Some(b"late".to_vec()))],
                ..Default::default()
            },
        )
        .unwrap_err();
    let refused = Store::lease_lost(&err).expect("a LeaseLost");
    assert_eq!(refused.holder.as_ref().map(|h| h.0.as_str()), Some("b"));
    assert!(b.held[lost] > a.held[lost], "a new holder gets a new token");
    assert!(
        format!("{err}").contains("this host (a) no longer holds the lease"),
        "{err}"
    );
    assert_ne!(store.state_get(lost, "k")?.as_deref(), Some(&b"late"[..]));
    store.lease_release_all("b")?;
    let infos = store.leases()?;
    assert!(
        infos.iter().all(|l| l.owner.as_deref() != Some("b")),
        "{infos:?}"
    );
    Ok(())
}
