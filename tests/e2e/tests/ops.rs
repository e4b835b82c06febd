//! Operating dphost: the admin API (status, metrics, health, connection
//! tests), configuration reload on SIGHUP, whole-config validation with
//! file lines, JSON logs, and secrets kept out of everything an operator sees.

use anyhow::{bail, Context, Result};
use e2e::*;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A distinctive secret: it must never appear in logs, status or the API.
const GOOD_SECRET: &str = "S3cr3t-6f1d2c9a-never-print-me";
const WRONG_SECRET: &str = "Wr0ng-8a7b6c5d-never-print-me-either";
const TOKEN: &str = "admin-token-0123456789abcdef";

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

struct Admin {
    base: String,
    client: reqwest::blocking::Client,
}

impl Admin {
    fn get(&self, path: &str) -> Result<(u16, String)> {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()?;
        Ok((r.status().as_u16(), r.text()?))
    }

    fn post(&self, path: &str) -> Result<(u16, Value)> {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()?;
        let status = r.status().as_u16();
        Ok((status, serde_json::from_str(&r.text()?)?))
    }

    fn status_of(&self, connector: &str) -> Result<Value> {
        let (code, body) = self.get("/status")?;
        if code != 200 {
            bail!("/status answered {code}: {body}");
        }
        let status: Value = serde_json::from_str(&body)?;
        let rows: Vec<Value> = serde_json::from_value(status["connectors"].clone())?;
        rows.into_iter()
            .find(|r| r["connector"] == connector)
            .with_context(|| format!("no {connector} in /status: {body}"))
    }

    /// Polls `/status` until `pred` holds for `connector`.
    fn wait_for(
        &self,
        connector: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(row) = self.status_of(connector) {
                if pred(&row) {
                    return Ok(row);
                }
                if Instant::now() > deadline {
                    bail!("{connector}: {what} did not happen; last status: {row:#}");
                }
            } else if Instant::now() > deadline {
                bail!("{connector}: /status never answered");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn connectors(sim: &Sim, b_secret: &str, a_tenant: &str, hold_url: &str) -> String {
    format!(
        "{}\n[[connector]]\nname = \"b\"\ntenant = \"tenant-b\"\ncomponent = \"proofpoint_tap\"\nhost_url = \"{}\"\nprincipal = \"{PRINCIPAL}\"\nsecret = \"{b_secret}\"\ninterval_min = 60\ninitial_lookback_hours = 1\n\n[[connector]]\nname = \"held\"\ntenant = \"tenant-c\"\ncomponent = \"proofpoint_tap\"\nhost_url = \"{hold_url}\"\nprincipal = \"{PRINCIPAL}\"\nsecret = \"{GOOD_SECRET}\"\nenabled = false\n",
        tap_connector(
            "a",
            a_tenant,
            sim,
            "interval_min = 60\ninitial_lookback_hours = 1"
        )
        .replace(SECRET, GOOD_SECRET),
        sim.url
    )
}

/// The config with every inline secret unquoted: not TOML, and the
/// offending line holds the secret.
fn unquote_secret(config: &str) -> String {
    config.replace(
        &format!("secret = \"{GOOD_SECRET}\""),
        &format!("secret = {GOOD_SECRET}"),
    )
}

/// The 1-based line of the first line of `config` holding a secret.
fn secret_line(config: &str) -> usize {
    config
        .lines()
        .position(|l| l.contains(GOOD_SECRET))
        .expect("a secret line")
        + 1
}

/// The value of exactly `series` (name and labels) in a metrics text.
fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}

/// The sum of every series starting with `prefix`.
fn metric_sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[test]
fn admin_api_reload_and_secrets() -> Result<()> {
    let sim = Sim::start(&["--seed", "8", "--rate", "120", "--secret", GOOD_SECRET])?;
    // A server that accepts connections and never answers, so a connection
    // test against it stays in progress while we try a second one.
    let hold = std::net::TcpListener::bind("127.0.0.1:0")?;
    let hold_url = format!("http://{}", hold.local_addr()?);
    let ws = Workspace::new()?;
    ws.write_config(&connectors(&sim, WRONG_SECRET, "tenant-a", &hold_url))?;
    std::fs::write(ws.dir.path().join("token"), format!("{TOKEN}\n"))?;
    let port = free_port()?;
    let log_path = ws.dir.path().join("run.log");
    let mut child = Command::new(dphost_bin())
        .args(["run", "--log-format", "json", "--log", "dphost=trace,info"])
        .args([
            "--admin",
            &format!("127.0.0.1:{port}"),
            "--admin-token-file",
        ])
        .arg(ws.dir.path().join("token"))
        .arg("--config")
        .arg(ws.config_path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()?;
    let result = exercise(&ws, &sim, port, &child, hold, &hold_url);
    signal(&child, "-TERM");
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path)?;
    result.with_context(|| format!("dphost run log:\n{log}"))?;

    // Every log line is one JSON object.
    for line in log.lines() {
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("not a JSON log line: {line}"))?;
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
    }
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(log.contains("configuration reload refused"), "{log}");
    assert!(
        log.contains("`tenant` cannot change from `tenant-a` to `tenant-z`"),
        "{log}"
    );
    let broken = unquote_secret(&std::fs::read_to_string(ws.config_path())?);
    let want = format!("dphost.toml: line {}, column ", secret_line(&broken));
    assert!(
        log.lines()
            .any(|l| l.contains("configuration reload refused") && l.contains(&want)),
        "the broken reload is refused with its line ({want}):\n{log}"
    );

    // Secrets appear nowhere an operator looks.
    let status = ws.dphost(&["status", "--format", "json"])?;
    let test = ws.dphost(&["test", "b"])?;
    for (what, text) in [
        ("the run log", log),
        ("dphost status", text(&status)),
        ("dphost test", text(&test)),
    ] {
        for secret in [GOOD_SECRET, WRONG_SECRET] {
            assert!(!text.contains(secret), "{what} shows a secret:\n{text}");
        }
    }
    Ok(())
}

fn exercise(
    ws: &Workspace,
    sim: &Sim,
    port: u16,
    child: &Child,
    hold: std::net::TcpListener,
    hold_url: &str,
) -> Result<()> {
    let admin = Admin {
        base: format!("http://127.0.0.1:{port}"),
        client: reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while admin.get("/healthz").map(|(c, _)| c).ok() != Some(200) {
        if Instant::now() > deadline {
            bail!("the admin API never became healthy");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _) = admin.get("/healthz")?;
    assert_eq!(code, 200);
    // Without the token: refused.
    let anon = admin.client.get(format!("{}/status", admin.base)).send()?;
    assert_eq!(anon.status().as_u16(), 401);

    let a = admin.wait_for("a", "a successful collection", |r| r["state"] == "ok")?;
    assert!(a["records"].as_u64().unwrap() > 0, "{a:#}");
    assert!(a["next_run"].is_string(), "{a:#}");
    assert!(a["checkpoint"].is_string(), "{a:#}");
    assert_eq!(a["running"], false, "{a:#}");
    let b = admin.wait_for("b", "a failing collection", |r| r["state"] == "failing")?;
    let err = b["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("HTTP 401"), "{b:#}");
    assert!(err.to_lowercase().contains("credential"), "{b:#}");
    // The connection test of the connector with the wrong secret explains
    // the 401 and shows neither secret.
    let (code, body) = admin.post("/connectors/b/test")?;
    assert_eq!(code, 502, "{body}");
    let said = body.to_string();
    assert!(said.contains("HTTP 401"), "{said}");
    for secret in [GOOD_SECRET, WRONG_SECRET] {
        assert!(
            !said.contains(secret),
            "the test response shows a secret: {said}"
        );
    }
    assert_eq!(admin.status_of("held")?["state"], "disabled");

    let (code, metrics) = admin.get("/metrics")?;
    assert_eq!(code, 200);
    for needle in [
        r#"dphost_runs_total{connector="a",tenant="tenant-a",operation="collect",outcome="ok"} 1"#,
        r#"dphost_run_failures_total{connector="b",tenant="tenant-b",operation="collect",outcome="failed"} 1"#,
        r#"dphost_events_collected_total{connector="a",tenant="tenant-a",event_type="clickPermitted"}"#,
        "dphost_run_duration_seconds_bucket",
        "dphost_instance_peak_memory_bytes{",
        "dphost_records_written_total{",
        "dphost_schedule_lag_seconds_count 2",
    ] {
        assert!(metrics.contains(needle), "no {needle} in\n{metrics}");
    }
    // Counts agree with the store (a collected once; get_or_create writes
    // a zero line, so presence alone proves nothing).
    let a = admin.status_of("a")?;
    assert!(a["alerts"].as_u64().unwrap() > 0, "{a:#}");
    for (family, field) in [
        ("dphost_alerts_created_total", "alerts"),
        ("dphost_records_quarantined_total", "quarantined"),
    ] {
        let series = format!(r#"{family}{{connector="a",tenant="tenant-a"}}"#);
        assert_eq!(
            metric(&metrics, &series),
            a[field].as_f64(),
            "{series} against /status {field}: {a:#}\n{metrics}"
        );
    }
    let budget_rows = ws.scalar("SELECT count(*) FROM request_budget")?;
    assert!(budget_rows > 0);
    assert_eq!(
        metric_sum(&metrics, "dphost_request_budget_used{pool="),
        budget_rows as f64,
        "{metrics}"
    );
    // a's collection at least was measured; every sample is in +Inf.
    let measured = metric(
        &metrics,
        r#"dphost_instance_memory_bytes_count{operation="collect"}"#,
    )
    .unwrap_or(0.0);
    assert!(measured >= 1.0, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            r#"dphost_instance_memory_bytes_bucket{le="+Inf",operation="collect"}"#
        ),
        Some(measured),
        "{metrics}"
    );
    // The events counted by type add up to the events stored.
    let counted: u64 = metrics
        .lines()
        .filter(|l| l.starts_with(r#"dphost_events_collected_total{connector="a""#))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    let stored = ws
        .search(
            "syslog",
            "msg_class:proofpoint_tap_event AND tenant_name:tenant-a AND (event_type:messageBlocked OR event_type:messageDelivered OR event_type:clickBlocked OR event_type:clickPermitted)",
        )?
        .len() as u64;
    assert!(stored > 0);
    assert_eq!(counted, stored, "{metrics}");

    // Connection tests: unknown name, one at a time.
    let (code, body) = admin.post("/connectors/nope/test")?;
    assert_eq!(code, 404, "{body}");
    let held = {
        let base = admin.base.clone();
        std::thread::spawn(move || {
            reqwest::blocking::Client::new()
                .post(format!("{base}/connectors/held/test"))
                .bearer_auth(TOKEN)
                .send()
                .map(|r| r.status().as_u16())
        })
    };
    // Wait until the held test's request reached the silent server.
    let (stream, _) = hold.accept()?;
    let (code, body) = admin.post("/connectors/a/test")?;
    assert_eq!(code, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("already running"));
    drop(stream);
    drop(hold);
    let held_code = held.join().expect("thread")?;
    assert_eq!(
        held_code, 502,
        "the held test fails once its server goes away ({hold_url})"
    );

    // Reload with b's secret fixed: b's test passes and clears its state.
    ws.write_config(&connectors(sim, GOOD_SECRET, "tenant-a", hold_url))?;
    signal(child, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = admin.post("/connectors/b/test")?;
        if code == 200 {
            assert_eq!(body["ok"], true, "{body}");
            break;
        }
        if Instant::now() > deadline {
            bail!("b's connection test never passed after the reload: {body}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let b = admin.status_of("b")?;
    assert_eq!(
        b["state"], "ok",
        "a passed test clears the failed state: {b:#}"
    );
    assert!(b["last_error"].is_null(), "{b:#}");

    // A reload that changes a's tenant is refused; the old config stays.
    ws.write_config(&connectors(sim, GOOD_SECRET, "tenant-z", hold_url))?;
    signal(child, "-HUP");
    // And one that is not even TOML, on a line holding the secret (the
    // TOML parser's own message would quote that line).
    std::thread::sleep(Duration::from_millis(500));
    ws.write_config(&unquote_secret(&connectors(
        sim,
        GOOD_SECRET,
        "tenant-a",
        hold_url,
    )))?;
    signal(child, "-HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(admin.status_of("a")?["tenant"], "tenant-a");
    let (code, _) = admin.get("/healthz")?;
    assert_eq!(code, 200, "still running on the previous configuration");

    // Secrets stay out of the admin API.
    let (_, status) = admin.get("/status")?;
    let (_, metrics) = admin.get("/metrics")?;
    for text in [status, metrics] {
        assert!(!text.contains(GOOD_SECRET) && !text.contains(WRONG_SECRET));
    }
    // Restore a valid file for the `dphost status`/`test` checks after.
    ws.write_config(&connectors(sim, WRONG_SECRET, "tenant-a", hold_url))?;
    Ok(())
}

#[test]
fn admin_api_off_loopback_needs_a_token() -> Result<()> {
    let ws = Workspace::new()?;
    ws.write_config("")?;
    let port = free_port()?;
    let out = ws.dphost(&["run", "--admin", &format!("0.0.0.0:{port}")])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("not loopback, without a token"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn invalid_configs_name_file_and_line_and_run_refuses_them() -> Result<()> {
    let sim = Sim::start(&["--seed", "1"])?;
    let ws = Workspace::new()?;
    // A component key misspelled: found by the component's own validation.
    ws.write_config(&tap_connector(
        "a",
        "tenant-a",
        &sim,
        "interval_min = 5\ncontent_type = [\"events\"]",
    ))?;
    let cfg = std::fs::read_to_string(ws.config_path())?;
    let line = cfg
        .lines()
        .position(|l| l.starts_with("content_type"))
        .unwrap()
        + 1;
    let check = ws.dphost(&["check"])?;
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    let want = format!("dphost.toml: line {line}: unknown key `content_type`");
    assert!(
        text(&check).contains(&want),
        "{want} not in\n{}",
        text(&check)
    );
    let run = ws.dphost(&["run"])?;
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    assert!(text(&run).contains(&format!("line {line}: unknown key `content_type`")));
    assert!(text(&run).contains("nothing was started"), "{}", text(&run));

    // Host keys: each problem with its line, all at once.
    let bad = tap_connector("acmé", "", &sim, "interval_min = 0").replace(
        &format!("host_url = \"{}\"", sim.url),
        "host_url = \"http://tap.example.com\"",
    );
    ws.write_config(&bad)?;
    let cfg = std::fs::read_to_string(ws.config_path())?;
    let line_of = |key: &str| cfg.lines().position(|l| l.starts_with(key)).unwrap() + 1;
    let check = ws.dphost(&["check"])?;
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
    let out = text(&check);
    assert!(out.contains("dphost.toml has 4 problem(s)"), "{out}");
    for (key, says) in [
        ("name", "non-ASCII (multibyte)"),
        ("tenant", "`tenant` must not be empty"),
        ("interval_min", "`interval_min` must be a whole number"),
        ("host_url", "must use https"),
    ] {
        let want = format!("line {}: ", line_of(key));
        assert!(
            out.lines().any(|l| l.contains(&want) && l.contains(says)),
            "{key}: `{want}…{says}` not in\n{out}"
        );
    }
    Ok(())
}

/// A configuration that is not TOML on a line holding the secret: `check`,
/// `run` and `once` name the file, line and column and never print the
/// line. A valid file with other problems does not print the secret either.
#[test]
fn config_errors_never_print_the_secret() -> Result<()> {
    let sim = Sim::start(&["--rate", "0", "--secret", GOOD_SECRET])?;
    let ws = Workspace::new()?;
    let good = tap_connector("a", "tenant-a", &sim, "").replace(SECRET, GOOD_SECRET);
    let quoted = format!("secret = \"{GOOD_SECRET}\"");
    for (what, broken) in [
        ("unquoted", format!("secret = {GOOD_SECRET}")),
        ("bad escape", format!("secret = \"{GOOD_SECRET}\\q\"")),
        ("duplicate key", format!("secret = \"x\"\n{quoted}")),
    ] {
        ws.write_config(&good.replace(&quoted, &broken))?;
        let line = secret_line(&std::fs::read_to_string(ws.config_path())?);
        for command in ["check", "run", "once"] {
            let out = ws.dphost(&[command])?;
            let said = text(&out);
            assert_eq!(out.status.code(), Some(2), "{what}, {command}: {said}");
            assert!(
                !said.contains(GOOD_SECRET),
                "{what}, {command} shows the secret:\n{said}"
            );
            let want = format!("dphost.toml: line {line}, column ");
            assert!(
                said.contains(&want),
                "{what}, {command}: no `{want}` in\n{said}"
            );
            assert!(said.contains("fix that line"), "{what}, {command}: {said}");
        }
    }
    // Valid TOML, refused by the component: the secret stays out too.
    ws.write_config(&format!("{good}content_types = [\"nope\"]\n"))?;
    for command in ["check", "run"] {
        let out = ws.dphost(&[command])?;
        let said = text(&out);
        assert!(!out.status.success(), "{command}: {said}");
        assert!(said.contains("`content_types`"), "{command}: {said}");
        assert!(
            !said.contains(GOOD_SECRET),
            "{command} shows the secret:\n{said}"
        );
    }
    Ok(())
}

/// Two message events the connector cannot use (no `messageTime`; a
/// number for it), made from a sample event, one per line.
fn two_malformed_messages() -> Result<String> {
    let sample = std::fs::read_to_string(fixtures_dir().join("message_delivered.ndjson"))?;
    let template: Value = serde_json::from_str(
        sample
            .lines()
            .find(|l| !l.contains("queryEndTime") && l.contains("\"messageTime\""))
            .context("a sample message")?,
    )?;
    let at = template["messageTime"].clone();
    let mut lines = Vec::new();
    for (i, time) in [None, Some(Value::from(1_641_070_000))]
        .into_iter()
        .enumerate()
    {
        let mut e = template.clone();
        e["id"] = format!("malformed-{i}").into();
        e["GUID"] = format!("malformed-guid-{i}").into();
        // tap-sim files an event by its threat time when messageTime is unusable.
        e["threatTime"] = at.clone();
        match time {
            None => drop(e.as_object_mut().unwrap().remove("messageTime")),
            Some(t) => e["messageTime"] = t,
        }
        lines.push(serde_json::to_string(&e)?);
    }
    Ok(lines.join("\n") + "\n")
}

fn rfc3339_secs(v: &Value) -> i64 {
    parse_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
        .unix_timestamp()
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// After one collection of the sample events plus two malformed ones, the
/// status (admin API and `dphost status`) counts what the store holds, the
/// lag is now minus the checkpoint, the run's start and end bracket it, and
/// the metrics agree with the status.
#[test]
fn status_and_metrics_count_alerts_quarantine_and_lag() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let malformed = dir.path().join("malformed.ndjson");
    std::fs::write(&malformed, two_malformed_messages()?)?;
    let (mut args, _) = fixture_sim_args();
    args.extend([
        "--events".into(),
        malformed.display().to_string(),
        "--events-type".into(),
        "messagesDelivered".into(),
    ]);
    let sim = Sim::start(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let ws = Workspace::new()?;
    ws.write_config(&tap_connector(
        "q",
        "tenant-q",
        &sim,
        "interval_min = 60\ninitial_lookback_hours = 24",
    ))?;
    std::fs::write(ws.dir.path().join("token"), format!("{TOKEN}\n"))?;
    let port = free_port()?;
    let log_path = ws.dir.path().join("run.log");
    let started = now_secs();
    let mut child = Command::new(dphost_bin())
        .args(["run", "--admin", &format!("127.0.0.1:{port}")])
        .arg("--admin-token-file")
        .arg(ws.dir.path().join("token"))
        .arg("--config")
        .arg(ws.config_path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()?;
    let admin = Admin {
        base: format!("http://127.0.0.1:{port}"),
        client: reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?,
    };
    let result = (|| -> Result<()> {
        let q = admin.wait_for("q", "a successful collection", |r| r["state"] == "ok")?;
        let (code, metrics) = admin.get("/metrics")?;
        assert_eq!(code, 200, "{metrics}");
        let checked = now_secs();

        let quarantined = ws.search("quarantine", "*")?;
        assert_eq!(quarantined.len(), 2, "{quarantined:#?}");
        assert!(quarantined.iter().all(|r| r["raw"]["id"]
            .as_str()
            .unwrap_or("")
            .starts_with("malformed-")));
        assert_eq!(q["quarantined"], 2, "{q:#}");
        let alerts = ws.search("alerts", "*")?.len() as u64;
        assert!(alerts > 0, "the sample events make alerts");
        assert_eq!(q["alerts"], alerts, "{q:#}");
        assert_eq!(
            q["records"],
            ws.search("syslog", "*")?.len() as u64,
            "{q:#}"
        );
        assert_eq!(q["last_outcome"], "ok", "{q:#}");
        for (family, field) in [
            ("dphost_alerts_created_total", "alerts"),
            ("dphost_records_quarantined_total", "quarantined"),
        ] {
            let series = format!(r#"{family}{{connector="q",tenant="tenant-q"}}"#);
            assert_eq!(
                metric(&metrics, &series),
                q[field].as_f64(),
                "{series} against /status {field}: {q:#}\n{metrics}"
            );
        }

        // The run started and ended during this test, in that order.
        let (start, end) = (
            rfc3339_secs(&q["last_run_start"]),
            rfc3339_secs(&q["last_run_end"]),
        );
        assert!(started <= start && start <= end && end <= checked, "{q:#}");
        assert_eq!(q["last_success"], q["last_run_end"], "{q:#}");
        // Lag: how far the checkpoint is behind now (the connector stays a
        // minute behind the API's indexing, so it is at least that).
        let checkpoint = rfc3339_secs(&q["checkpoint"]);
        let lag = q["lag_seconds"].as_i64().context("lag_seconds")?;
        assert!(lag >= 60, "{q:#}");
        let read_at = checked - 10..=checked;
        assert!(
            read_at.contains(&(checkpoint + lag)),
            "checkpoint + lag is when the status was read: {q:#}"
        );

        // `dphost status` reads the same from the store.
        let out = ws.dphost(&["status", "--format", "json"])?;
        assert!(out.status.success(), "{}", text(&out));
        let status: Value = serde_json::from_slice(&out.stdout)?;
        let row = &status["connectors"][0];
        for field in [
            "state",
            "records",
            "alerts",
            "quarantined",
            "last_run_start",
            "last_run_end",
            "checkpoint",
        ] {
            assert_eq!(row[field], q[field], "{field}: {row:#}");
        }
        assert!(row["lag_seconds"].as_i64().unwrap() >= lag, "{row:#}");
        Ok(())
    })();
    signal(&child, "-TERM");
    let _ = child.wait();
    result.with_context(|| {
        format!(
            "dphost run log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        )
    })
}

/// A TAP API that allows one request a day: the collection that meets its
/// 429 shows `rate-limited` (not `failing`), with the wait, in the status.
#[test]
fn status_shows_a_rate_limited_connector() -> Result<()> {
    let sim = Sim::start(&["--seed", "5", "--rate", "60", "--rate-limit", "1"])?;
    let ws = Workspace::new()?;
    ws.write_config(&tap_connector(
        "r",
        "tenant-r",
        &sim,
        "initial_lookback_hours = 3",
    ))?;
    let run = ws.once()?;
    assert!(run.rate_limited_secs.is_some(), "{}", run.text);
    assert!(sim.stats()?["responses_429"].as_u64() >= Some(1));
    let out = ws.dphost(&["status", "--format", "json"])?;
    assert!(out.status.success(), "{}", text(&out));
    let status: Value = serde_json::from_slice(&out.stdout)?;
    let r = &status["connectors"][0];
    assert_eq!(r["state"], "rate-limited", "{r:#}");
    assert_eq!(r["last_outcome"], "rate-limited", "{r:#}");
    let err = r["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("retries by itself at"), "{r:#}");
    let table = ws.dphost(&["status"])?;
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("rate-limited"),
        "{}",
        text(&table)
    );
    Ok(())
}

/// A connector's data is kept under its name: across a restart, its tenant
/// cannot change (`check` says so, `run` and `once` refuse to start); a new
/// name starts afresh.
#[test]
fn a_restart_may_not_move_a_connector_to_another_tenant() -> Result<()> {
    let sim = Sim::start(&["--seed", "3", "--rate", "60"])?;
    let ws = Workspace::new()?;
    let a = |tenant: &str| tap_connector("a", tenant, &sim, "initial_lookback_hours = 1");
    ws.write_config(&a("tenant-a"))?;
    let first = ws.once()?;
    assert!(first.ok, "{}", first.text);

    ws.write_config(&a("tenant-z"))?;
    let cfg = std::fs::read_to_string(ws.config_path())?;
    let line = cfg.lines().position(|l| l.starts_with("tenant")).unwrap() + 1;
    let want = format!(
        "line {line}: connector `a`: `tenant` is `tenant-z` here, but this connector's data has been kept under tenant `tenant-a` since "
    );
    let check = ws.dphost(&["check"])?;
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(
        text(&check).contains(&want),
        "{want} not in\n{}",
        text(&check)
    );
    assert!(
        text(&check).contains("give the connector a new name"),
        "{}",
        text(&check)
    );
    for (command, says) in [
        ("run", "nothing was started"),
        ("once", "nothing was collected"),
    ] {
        let out = ws.dphost(&[command])?;
        assert_eq!(out.status.code(), Some(2), "{command}: {}", text(&out));
        assert!(text(&out).contains(&want), "{command}: {}", text(&out));
        assert!(text(&out).contains(says), "{command}: {}", text(&out));
    }
    assert!(
        ws.search("syslog", "tenant_name:tenant-z")?.is_empty(),
        "nothing was stored under the new tenant"
    );
    // Under a new name the other tenant starts afresh.
    ws.write_config(&tap_connector(
        "a2",
        "tenant-z",
        &sim,
        "initial_lookback_hours = 1",
    ))?;
    let fresh = ws.once()?;
    assert!(fresh.ok, "{}", fresh.text);
    Ok(())
}

/// Reloads checked against the store as well as the previous file: a
/// changed component is refused, and so is a connector removed and then
/// added again with another tenant.
#[test]
fn a_reload_may_not_change_a_connector_component_or_tenant_even_via_removal() -> Result<()> {
    let sim = Sim::start(&["--seed", "4", "--rate", "60"])?;
    let ws = Workspace::new()?;
    let a = |tenant: &str| {
        tap_connector(
            "a",
            tenant,
            &sim,
            "interval_min = 60\ninitial_lookback_hours = 1",
        )
    };
    let b = tap_connector(
        "b",
        "tenant-b",
        &sim,
        "interval_min = 60\ninitial_lookback_hours = 1",
    );
    ws.write_config(&format!("{}{b}", a("tenant-a")))?;
    let log_path = ws.dir.path().join("run.log");
    let mut child = Command::new(dphost_bin())
        .args(["run", "--config"])
        .arg(ws.config_path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()?;
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let reloads = || log().matches("configuration reload").count();
    let result = (|| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !log().contains("scheduler started") {
            if Instant::now() > deadline {
                bail!("the scheduler never started");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Writes `config`, sends SIGHUP, returns the log's new reload line.
        let reload = |config: String| -> Result<String> {
            let before = reloads();
            ws.write_config(&config)?;
            signal(&child, "-HUP");
            let deadline = Instant::now() + Duration::from_secs(60);
            while reloads() == before {
                if Instant::now() > deadline {
                    bail!("the reload was not logged");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // The refusal spans several lines; take the rest of the log.
            let log = log();
            let at = log
                .match_indices("configuration reload")
                .nth(before)
                .unwrap()
                .0;
            Ok(log[at..].to_string())
        };
        let said = reload(format!("{}{b}", a("tenant-a")).replace(
            "component = \"proofpoint_tap\"",
            "component = \"sandbox_probe\"",
        ))?;
        assert!(said.starts_with("configuration reload refused"), "{said}");
        assert!(
            said.contains("`component` cannot change from `proofpoint_tap` to `sandbox_probe`"),
            "{said}"
        );
        let said = reload(b.clone())?;
        assert!(said.starts_with("configuration reloaded"), "{said}");
        let said = reload(format!("{}{b}", a("tenant-z")))?;
        assert!(said.starts_with("configuration reload refused"), "{said}");
        assert!(
            said.contains("connector `a`: `tenant` is `tenant-z` here, but this connector's data has been kept under tenant `tenant-a`"),
            "{said}"
        );
        assert!(said.contains("give the connector a new name"), "{said}");
        // Back with its own tenant, it is welcome.
        let said = reload(format!("{}{b}", a("tenant-a")))?;
        assert!(said.starts_with("configuration reloaded"), "{said}");
        Ok(())
    })();
    signal(&child, "-TERM");
    let _ = child.wait();
    result.with_context(|| format!("dphost run log:\n{}", log()))
}

/// `dphost check` names the file, the line and what to do for an unknown
/// component, an unknown content type (the component's own check), and an
/// unknown key at the top level or in `[host]`.
#[test]
fn check_names_unknown_components_content_types_and_keys() -> Result<()> {
    let sim = Sim::start(&["--rate", "0"])?;
    let ws = Workspace::new()?;
    let nope = tap_connector("a", "tenant-a", &sim, "")
        .replace("component = \"proofpoint_tap\"", "component = \"nope\"");
    let bogus = tap_connector(
        "b",
        "tenant-b",
        &sim,
        "content_types = [\"events\", \"bogus\"]",
    );
    ws.write_config(&format!("{nope}{bogus}"))?;
    let cfg = std::fs::read_to_string(ws.config_path())?;
    let line_of = |needle: &str| cfg.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let check = ws.dphost(&["check"])?;
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    let out = String::from_utf8_lossy(&check.stdout).to_string();
    for (needle, says) in [
        (
            "component = \"nope\"",
            "connector `a`: component `nope`: no component `nope` in ",
        ),
        ("content_types", "`content_types` in connector `b` must be"),
    ] {
        let want = format!("dphost.toml: line {}: {says}", line_of(needle));
        assert!(
            out.lines().any(|l| l.contains(&want)),
            "`{want}` not in\n{out}"
        );
    }
    assert!(
        out.contains("found: proofpoint_tap, sandbox_probe"),
        "{out}"
    );
    assert!(
        out.contains("set `component` to one found there, or put nope.wasm in that folder"),
        "{out}"
    );
    assert!(out.contains("`\"bogus\"` is not one of them"), "{out}");
    assert!(out.contains("list of `events` and/or `threats`"), "{out}");

    // Keys dphost does not know, before anything is loaded.
    ws.write_config_with_host("data_dri = \"x\"", &tap_connector("c", "t", &sim, ""))?;
    let check = ws.dphost(&["check"])?;
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
    let err = String::from_utf8_lossy(&check.stderr).to_string();
    assert!(
        err.contains("dphost.toml: line 4: unknown key `data_dri` in [host]: remove it or fix its spelling (expected one of `data_dir`"),
        "{err}"
    );
    ws.write_config(&tap_connector("c", "t", &sim, ""))?;
    let body = std::fs::read_to_string(ws.config_path())?;
    std::fs::write(
        ws.config_path(),
        format!("# dphost\nconectors = []\n{body}"),
    )?;
    let check = ws.dphost(&["check"])?;
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
    let err = String::from_utf8_lossy(&check.stderr).to_string();
    assert!(
        err.contains("dphost.toml: line 2: unknown key `conectors` at the top level: remove it or fix its spelling (expected one of `host`, `connector`, `output`, `ad`)"),
        "{err}"
    );
    Ok(())
}
