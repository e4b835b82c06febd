//! A hostile test component: it implements the connector world and, on
//! `collect`, tries to do what a sandboxed connector must not, according to
//! the `probe` key of its configuration:
//!
//! - `http`: GET `target_url`; reports `denied`, `status N` or the error;
//! - `snoop`: looks for the secret everywhere a component could: its
//!   configuration, environment, arguments, the filesystem; commits what it
//!   saw as a record so the test can check the store for the secret;
//! - `spin`: loops forever (the CPU deadline must stop it);
//! - `sleep`: sleeps `secs` (default an hour) using no CPU, as a component
//!   waiting on the network would (the wall-clock bound must stop it);
//! - `hog`: allocates without end (the memory cap must stop it);
//! - `recurse`: recurses without end (the stack limit must stop it);
//! - `flood`: writes `lines` (default 100000) log lines of 8 KiB and 64 MiB
//!   to stderr, then commits one record (the log budget must hold);
//! - `giant`: commits a batch of more records than `max_batch_records` and
//!   one of more bytes than `max_batch_mib` (both must be refused whole),
//!   then reports what the sink said;
//! - `garbage`: commits batches that are malformed in every way the host
//!   checks (not JSON, not an object, empty or huge ids, bad action params,
//!   huge state values), each must be refused whole; reports the answers;
//! - `pipelined`: begins a commit, tries to begin a second before taking
//!   the first's outcome (must be refused), takes the outcomes, then ends
//!   with a batch in flight (the host must still store it);
//! - `trap`: commits one good batch (records and a state key), then panics
//!   half way through building the next: the first stays, nothing of the
//!   second lands;
//! - `state`: reads state keys that would belong to other connectors if the
//!   host did not namespace them, and commits what it found;
//! - `ok` (also when `probe` is absent): commits one record and succeeds
//!   (the next run after a stopped one must work).
//!
//! Natively the crate is empty: it only makes sense as a component.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "connector-world",
        generate_all,
    });

    use dphost::connector::types::{
        Action, Batch, CommitOutcome, ConnectorError, Index, Record, WriteMode,
    };
    use dphost::connector::{log, sink, state};
    use exports::dphost::connector::connector::Guest;
    use wasi::http::outgoing_handler;
    use wasi::http::types::{ErrorCode, Fields, Method, OutgoingRequest, Scheme};

    struct Probe;

    fn setting(config: &str, key: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(config).ok()?;
        v.get(key)?.as_str().map(str::to_string)
    }

    fn commit(id: &str, body: serde_json::Value) -> Result<(), ConnectorError> {
        sink::commit(&Batch {
            records: vec![Record {
                index: Index::Syslog,
                id: id.to_string(),
                body: body.to_string(),
                mode: WriteMode::Upsert,
            }],
            actions: vec![],
            state: vec![],
        })
        .map(|_| ())
        .map_err(ConnectorError::Internal)
    }

    /// GETs `url`; the outcome as a short word or phrase.
    fn get(url: &str) -> String {
        let (scheme, rest) = match url.split_once("://") {
            Some(("https", rest)) => (Scheme::Https, rest),
            Some(("http", rest)) => (Scheme::Http, rest),
            _ => return format!("bad url {url}"),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let headers = Fields::new();
        // Trying to set credentials itself must fail too.
        let auth_refused = headers
            .append("authorization", b"Basic ZXZpbDpldmls")
            .is_err();
        let req = OutgoingRequest::new(headers);
        let _ = req.set_method(&Method::Get);
        let _ = req.set_scheme(Some(&scheme));
        let _ = req.set_authority(Some(authority));
        let _ = req.set_path_with_query(Some(path));
        let outcome = match outgoing_handler::handle(req, None) {
            Err(ErrorCode::HttpRequestDenied) => "denied".to_string(),
            Err(e) => format!("error {e:?}"),
            Ok(future) => {
                future.subscribe().block();
                match future.get() {
                    Some(Ok(Ok(resp))) => format!("status {}", resp.status()),
                    Some(Ok(Err(ErrorCode::HttpRequestDenied))) => "denied".to_string(),
                    Some(Ok(Err(e))) => format!("error {e:?}"),
                    other => format!("error {other:?}"),
                }
            }
        };
        format!("{outcome}; authorization header refused: {auth_refused}")
    }

    fn record(id: &str, body: String) -> Record {
        Record {
            index: Index::Syslog,
            id: id.to_string(),
            body,
            mode: WriteMode::Insert,
        }
    }

    fn setting_u64(config: &str, key: &str) -> Option<u64> {
        let v: serde_json::Value = serde_json::from_str(config).ok()?;
        v.get(key)?.as_u64()
    }

    /// The `limits` the host passed in the configuration.
    fn limit(config: &str, key: &str, default: u64) -> u64 {
        serde_json::from_str::<serde_json::Value>(config)
            .ok()
            .and_then(|v| v.get("limits")?.get(key)?.as_u64())
            .unwrap_or(default)
    }

    #[inline(never)]
    fn deep(n: u64, pad: [u64; 16]) -> u64 {
        let pad = std::hint::black_box(pad);
        if n == 0 {
            return pad[0];
        }
        std::hint::black_box(deep(n - 1, pad)) + pad[(n % 16) as usize]
    }

    fn answer(r: Result<sink::CommitOutcome, String>) -> String {
        match r {
            Ok(o) => format!("accepted ({} written)", o.written),
            Err(e) => format!("refused: {e}"),
        }
    }

    fn list_dir(path: &str) -> String {
        match std::fs::read_dir(path) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().display().to_string())
                .collect::<Vec<_>>()
                .join(","),
            Err(e) => format!("error: {e}"),
        }
    }

    impl Guest for Probe {
        fn describe() -> String {
            r#"{"name":"sandbox_probe","version":"0","vendor":"dphost tests","description":"tries to escape the sandbox","config":{}}"#.to_string()
        }

        fn validate_config(_config: String) -> Result<(), Vec<String>> {
            Ok(())
        }

        fn test_connection(config: String) -> Result<String, ConnectorError> {
            let url = setting(&config, "target_url").unwrap_or_default();
            Ok(get(&url))
        }

        fn collect(config: String) -> Result<String, ConnectorError> {
            let mode = setting(&config, "probe").unwrap_or_default();
            match mode.as_str() {
                "http" => {
                    let url = setting(&config, "target_url").unwrap_or_default();
                    let outcome = get(&url);
                    commit(
                        "http",
                        serde_json::json!({"msg_class": "probe", "url": url, "outcome": outcome}),
                    )?;
                    Ok(outcome)
                }
                "snoop" => {
                    let env: Vec<String> =
                        std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                    let seen = serde_json::json!({
                        "msg_class": "probe",
                        "config": config,
                        "env": env,
                        "args": std::env::args().collect::<Vec<_>>(),
                        "root": list_dir("/"),
                        "cwd": list_dir("."),
                        "proc_environ": std::fs::read_to_string("/proc/self/environ")
                            .unwrap_or_else(|e| format!("error: {e}")),
                    });
                    commit("snoop", seen.clone())?;
                    Ok(seen.to_string())
                }
                "spin" => {
                    let mut n: u64 = 0;
                    loop {
                        n = std::hint::black_box(n.wrapping_add(1));
                    }
                }
                "sleep" => {
                    let secs = setting_u64(&config, "secs").unwrap_or(3600);
                    std::thread::sleep(std::time::Duration::from_secs(secs));
                    Ok(format!("slept {secs} s"))
                }
                "hog" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![1u8; 1 << 20]);
                        std::hint::black_box(&hoard);
                    }
                }
                "recurse" => {
                    let n = deep(u64::MAX, [7; 16]);
                    Ok(format!("returned {n}"))
                }
                "flood" => {
                    let lines = setting_u64(&config, "lines").unwrap_or(100_000);
                    let line = "x".repeat(8192);
                    for i in 0..lines {
                        log::log(log::Level::Warn, &format!("flood {i} {line}"));
                    }
                    let chunk = "y".repeat(1 << 20);
                    for _ in 0..64 {
                        eprintln!("{chunk}");
                    }
                    commit(
                        "flood",
                        serde_json::json!({"msg_class": "probe", "flooded": lines}),
                    )?;
                    Ok(format!("logged {lines} lines"))
                }
                "giant" => {
                    let max_records = limit(&config, "max_batch_records", 20_000);
                    let max_mib = limit(&config, "max_batch_mib", 64);
                    let many = Batch {
                        records: (0..=max_records)
                            .map(|i| record(&format!("giant-{i}"), "{}".into()))
                            .collect(),
                        actions: vec![],
                        state: vec![],
                    };
                    let too_many = answer(sink::commit(&many));
                    drop(many);
                    let body = format!("{{\"pad\":\"{}\"}}", "z".repeat((max_mib as usize) << 20));
                    let big = Batch {
                        records: vec![record("giant-bytes", body)],
                        actions: vec![],
                        state: vec![],
                    };
                    let too_big = answer(sink::commit(&big));
                    drop(big);
                    commit(
                        "giant",
                        serde_json::json!({"msg_class": "probe", "too_many": too_many, "too_big": too_big}),
                    )?;
                    Ok(format!("too many: {too_many}; too big: {too_big}"))
                }
                "garbage" => {
                    let good = record("garbage-good", "{}".into());
                    let action = |params: &str| Action {
                        id: "a1".into(),
                        kind: "disable-user".into(),
                        target: "x@example.com".into(),
                        reason: "probe".into(),
                        params: params.into(),
                    };
                    let cases: Vec<(&str, Batch)> = vec![
                        (
                            "not json",
                            Batch {
                                records: vec![good.clone(), record("g1", "{not json".into())],
                                actions: vec![],
                                state: vec![],
                            },
                        ),
                        (
                            "not an object",
                            Batch {
                                records: vec![good.clone(), record("g2", "[1,2,3]".into())],
                                actions: vec![],
                                state: vec![],
                            },
                        ),
                        (
                            "trailing garbage",
                            Batch {
                                records: vec![good.clone(), record("g3", "{} {}".into())],
                                actions: vec![],
                                state: vec![],
                            },
                        ),
                        (
                            "empty id",
                            Batch {
                                records: vec![good.clone(), record("", "{}".into())],
                                actions: vec![],
                                state: vec![],
                            },
                        ),
                        (
                            "nested 200 deep",
                            Batch {
                                records: vec![
                                    good.clone(),
                                    record(
                                        "g4",
                                        format!(
                                            "{{\"x\":{}1{}}}",
                                            "[".repeat(200),
                                            "]".repeat(200)
                                        ),
                                    ),
                                ],
                                actions: vec![],
                                state: vec![],
                            },
                        ),
                        (
                            "huge id",
                            Batch {
                                records: vec![
                                    good.clone(),
                                    record(&"i".repeat(100_000), "{}".into()),
                                ],
                                actions: vec![],
                                state: vec![],
                            },
                        ),
                        (
                            "bad action params",
                            Batch {
                                records: vec![good.clone()],
                                actions: vec![action("not json")],
                                state: vec![],
                            },
                        ),
                        (
                            "empty action target",
                            Batch {
                                records: vec![good.clone()],
                                actions: vec![Action {
                                    target: String::new(),
                                    ..action("{}")
                                }],
                                state: vec![],
                            },
                        ),
                        (
                            "empty state key",
                            Batch {
                                records: vec![good.clone()],
                                actions: vec![],
                                state: vec![(String::new(), Some(vec![1]))],
                            },
                        ),
                        (
                            "huge state value",
                            Batch {
                                records: vec![good.clone()],
                                actions: vec![],
                                state: vec![("k".into(), Some(vec![0; 2 << 20]))],
                            },
                        ),
                    ];
                    let mut answers = serde_json::Map::new();
                    for (what, batch) in cases {
                        answers.insert(what.to_string(), answer(sink::commit(&batch)).into());
                    }
                    let summary = serde_json::Value::Object(answers);
                    commit(
                        "garbage",
                        serde_json::json!({"msg_class": "probe", "answers": summary}),
                    )?;
                    Ok(summary.to_string())
                }
                "pipelined" => {
                    let one = |id: &str| Batch {
                        records: vec![record(
                            id,
                            format!("{{\"msg_class\":\"probe\",\"id\":\"{id}\"}}"),
                        )],
                        actions: vec![],
                        state: vec![],
                    };
                    let show = |r: &Result<(), String>| match r {
                        Ok(()) => "begun".to_string(),
                        Err(e) => format!("refused: {e}"),
                    };
                    let outcome = |o: &Option<Result<CommitOutcome, String>>| match o {
                        Some(Ok(o)) => format!("written {}", o.written),
                        Some(Err(e)) => format!("failed: {e}"),
                        None => "none".to_string(),
                    };
                    let a = show(&sink::commit_begin(&one("pipe-a")));
                    let b = show(&sink::commit_begin(&one("pipe-b")));
                    let first_wait = outcome(&sink::commit_wait());
                    let second_wait = outcome(&sink::commit_wait());
                    commit(
                        "pipelined",
                        serde_json::json!({"msg_class": "probe", "a": a, "b": b,
                            "first_wait": first_wait, "second_wait": second_wait}),
                    )?;
                    // Ends with a batch in flight: the host waits for it.
                    sink::commit_begin(&one("pipe-c")).map_err(ConnectorError::Internal)?;
                    Ok("pipelined".into())
                }
                "trap" => {
                    let first = Batch {
                        records: (0..100)
                            .map(|i| {
                                record(
                                    &format!("trap-a-{i}"),
                                    format!(
                                        "{{\"msg_class\":\"probe\",\"batch\":\"a\",\"n\":{i}}}"
                                    ),
                                )
                            })
                            .collect(),
                        actions: vec![],
                        state: vec![("checkpoint".into(), Some(b"after-a".to_vec()))],
                    };
                    sink::commit(&first).map_err(ConnectorError::Internal)?;
                    let mut second = Vec::new();
                    for i in 0..100 {
                        if i == 50 {
                            panic!("probe: trapping half way through the second batch");
                        }
                        second.push(record(&format!("trap-b-{i}"), "{}".into()));
                    }
                    Ok("unreachable".into())
                }
                "state" => {
                    let victim = setting(&config, "victim").unwrap_or_default();
                    let tenant = setting(&config, "victim_tenant").unwrap_or_default();
                    let keys = [
                        "checkpoint".to_string(),
                        format!("{victim}/checkpoint"),
                        format!("{victim}:checkpoint"),
                        format!("{victim}\u{0}checkpoint"),
                        format!("{tenant}/{victim}/checkpoint"),
                        format!("../{victim}/checkpoint"),
                        "' OR connector = connector --".to_string(),
                        format!("checkpoint' AND connector = '{victim}"),
                        "%".to_string(),
                        "*".to_string(),
                    ];
                    let found: Vec<String> = keys
                        .iter()
                        .filter_map(|k| {
                            state::get(k).map(|v| format!("{k} = {}", String::from_utf8_lossy(&v)))
                        })
                        .collect();
                    commit(
                        "state",
                        serde_json::json!({"msg_class": "probe", "tried": keys.len(), "found": found}),
                    )?;
                    Ok(format!("found {} of {} keys", found.len(), keys.len()))
                }
                "ok" | "" => {
                    commit("ok", serde_json::json!({"msg_class": "probe", "ok": true}))?;
                    Ok("ok".to_string())
                }
                other => Err(ConnectorError::BadConfig(vec![format!(
                    "unknown probe `{other}`"
                )])),
            }
        }
    }

    export!(Probe);
}
