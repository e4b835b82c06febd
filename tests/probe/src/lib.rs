//! A hostile test component: it implements the connector world and, on
//! `collect`, tries to do what a sandboxed connector must not, according to
//! the `probe` key of its configuration:
//!
//! - `http`: GET `target_url`; reports `denied`, `status N` or the error;
//! - `snoop`: looks for the secret everywhere a component could: its
//!   configuration, environment, arguments, the filesystem; commits what it
//!   saw as a record so the test can check the store for the secret;
//! - `spin`: loops forever (the CPU deadline must stop it);
//! - `hog`: allocates without end (the memory cap must stop it);
//! - `ok`: commits one record and succeeds (the next run after a stopped
//!   one must work).
//!
//! Natively the crate is empty: it only makes sense as a component.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "connector-world",
        generate_all,
    });

    use dphost::connector::sink;
    use dphost::connector::types::{Batch, ConnectorError, Index, Record, WriteMode};
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
                "hog" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![1u8; 1 << 20]);
                        std::hint::black_box(&hoard);
                    }
                }
                "ok" => {
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
