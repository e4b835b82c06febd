//! Forwarding to a real rsyslog (tests/rsyslog/rsyslog.sh) on loopback, over
//! TCP and over TLS, and to rotated NDJSON files: every record (every
//! version of an updated alert) arrives once per delivery attempt, across a
//! crash and restart of the forwarder, a restart of rsyslog, and records
//! written while either was down; TLS is verified against the test CA, and
//! an output trusting another CA delivers nothing.

use anyhow::{bail, Context, Result};
use e2e::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Generous bound for things that take a second or two; only reached when
/// something is broken.
const PATIENCE: Duration = Duration::from_secs(90);

fn script() -> PathBuf {
    root().join("tests/rsyslog/rsyslog.sh")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// rsyslogd in the foreground, stopped on drop.
struct Rsyslog {
    dir: PathBuf,
    plain: u16,
    tls: u16,
    child: Option<Child>,
}

impl Rsyslog {
    fn setup(dir: &Path) -> Result<Rsyslog> {
        let (plain, tls) = (free_port(), free_port());
        let status = Command::new("sh")
            .arg(script())
            .args(["setup", &dir.display().to_string()])
            .args([plain.to_string(), tls.to_string()])
            .status()
            .context("running tests/rsyslog/rsyslog.sh setup")?;
        if !status.success() {
            bail!("tests/rsyslog/rsyslog.sh setup failed");
        }
        let mut r = Rsyslog {
            dir: dir.to_path_buf(),
            plain,
            tls,
            child: None,
        };
        r.start()?;
        Ok(r)
    }

    fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rsyslogd.out"))?;
        self.child = Some(
            Command::new("sh")
                .arg(script())
                .args(["run", &self.dir.display().to_string()])
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting rsyslogd")?,
        );
        let deadline = Instant::now() + PATIENCE;
        for port in [self.plain, self.tls] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if Instant::now() > deadline {
                    bail!("rsyslogd does not listen on {port}: {}", self.output());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("rsyslogd.out")).unwrap_or_default()
    }

    /// The messages rsyslog wrote for a listener, as it parsed them.
    fn messages(&self, listener: &str) -> Vec<Value> {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{listener}.log"))).unwrap_or_default();
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `dphost run` with the forwarding configuration, stopped on drop.
struct Forwarder {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
}

impl Forwarder {
    fn start(config: &Path, log: &Path) -> Result<Forwarder> {
        let mut f = Forwarder {
            child: None,
            config: config.to_path_buf(),
            log: log.to_path_buf(),
        };
        f.restart()?;
        Ok(f)
    }

    fn restart(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.child = Some(
            Command::new(dphost_bin())
                .args(["run", "--config"])
                .arg(&self.config)
                .env_remove("RUST_LOG")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("starting dphost run")?,
        );
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }

    /// SIGKILL: no chance to finish anything.
    fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What identifies a record across its versions.
fn key(index: &str, body: &Value) -> String {
    let id = if index == "alerts" {
        body["alert"]["id"].as_str()
    } else {
        body["event_id"].as_str()
    };
    match id {
        Some(id) => format!("{index}/{}/{id}", body["connector"].as_str().unwrap_or("")),
        None => format!("{index}/{}", canonical(body)),
    }
}

/// Every stored record: key -> canonical body.
fn stored(ws: &Workspace) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for index in ["syslog", "alerts"] {
        for body in ws.search(index, "*")? {
            assert!(
                out.insert(key(index, &body), canonical(&body)).is_none(),
                "two stored records share the key {}",
                key(index, &body)
            );
        }
    }
    Ok(out)
}

/// Deliveries seen at a destination: (key, canonical body) in arrival order.
type Deliveries = Vec<(String, String)>;

fn syslog_deliveries(rs: &Rsyslog, listener: &str) -> Deliveries {
    rs.messages(listener)
        .iter()
        .map(|m| {
            let sd = m["sd"].as_str().unwrap_or("");
            let index = if sd.contains("index=\"alerts\"") {
                "alerts"
            } else {
                "syslog"
            };
            let body: Value = serde_json::from_str(m["msg"].as_str().unwrap_or(""))
                .unwrap_or_else(|e| panic!("rsyslog got a message that is not JSON ({e}): {m}"));
            (key(index, &body), canonical(&body))
        })
        .collect()
}

fn ndjson_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn ndjson_deliveries(dir: &Path) -> Deliveries {
    let mut out = Vec::new();
    for file in ndjson_files(dir) {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} ends in half a line",
            file.display()
        );
        for line in text.lines() {
            let body: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", file.display()));
            let index = if body["msg_class"] == "proofpoint_tap_alert" {
                "alerts"
            } else {
                "syslog"
            };
            out.push((key(index, &body), canonical(&body)));
        }
    }
    out
}

/// Whether each of `outputs` has its cursor at the newest change of the
/// Syslog and Alerts indexes.
fn cursors_caught_up(ws: &Workspace, outputs: &[&str]) -> Result<bool> {
    for idx in ["syslog", "alerts"] {
        let newest = ws
            .rows(
                "SELECT coalesce(max(change_seq), 0) FROM records WHERE idx = $1",
                &[idx],
            )?
            .first()
            .and_then(|r| r.first())
            .context("no row")?
            .int()?;
        for output in outputs {
            let at = match ws
                .rows(
                    "SELECT change_seq FROM forward_cursors WHERE output = $1 AND idx = $2",
                    &[output, idx],
                )?
                .first()
                .and_then(|r| r.first())
            {
                Some(cell) => cell.int()?,
                None => 0,
            };
            if at < newest {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Why `got` does not (yet) hold every stored record in its stored version.
fn missing(want: &BTreeMap<String, String>, got: &Deliveries) -> Option<String> {
    let seen: BTreeSet<(&str, &str)> = got.iter().map(|(k, b)| (k.as_str(), b.as_str())).collect();
    let absent: Vec<&String> = want
        .iter()
        .filter(|(k, b)| !seen.contains(&(k.as_str(), b.as_str())))
        .map(|(k, _)| k)
        .collect();
    if absent.is_empty() {
        None
    } else {
        Some(format!(
            "{} of {} records not delivered (in their stored version), e.g. {}",
            absent.len(),
            want.len(),
            absent[0]
        ))
    }
}

/// Each version delivered exactly once, nothing unknown delivered.
fn assert_once_each(what: &str, want: &BTreeMap<String, String>, got: &Deliveries) {
    let mut count: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (k, b) in got {
        *count.entry((k.as_str(), b.as_str())).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{what}: {} record versions arrived more than once, e.g. {:?}",
        twice.len(),
        twice[0]
    );
    let unknown: Vec<_> = got.iter().filter(|(k, _)| !want.contains_key(k)).collect();
    assert!(
        unknown.is_empty(),
        "{what}: {} deliveries of records the store does not hold, e.g. {:?}",
        unknown.len(),
        unknown[0].0
    );
    assert_eq!(missing(want, got), None, "{what}");
}

struct Destinations<'a> {
    rs: &'a Rsyslog,
    spool: PathBuf,
}

impl Destinations<'_> {
    fn all(&self) -> [(&'static str, Deliveries); 3] {
        [
            ("syslog over TCP", syslog_deliveries(self.rs, "plain")),
            ("syslog over TLS", syslog_deliveries(self.rs, "tls")),
            ("ndjson files", ndjson_deliveries(&self.spool)),
        ]
    }

    /// Waits until every destination holds every stored record, then checks
    /// each arrived once.
    fn settle(&self, ws: &Workspace, fwd: &Forwarder, phase: &str) -> Result<usize> {
        let want = stored(ws)?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let lagging: Vec<String> = self
                .all()
                .iter()
                .filter_map(|(what, got)| missing(&want, got).map(|m| format!("{what}: {m}")))
                .collect();
            if lagging.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{phase}: {}\n--- dphost run:\n{}\n--- rsyslogd:\n{}",
                    lagging.join("\n"),
                    fwd.output(),
                    self.rs.output()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for (what, got) in self.all() {
            assert_once_each(&format!("{phase}, {what}"), &want, &got);
        }
        // Delivered is not yet acknowledged: a forwarder killed between the
        // two sends the last records again (at-least-once). Wait until every
        // output that can deliver has stored its cursor past them, so a kill
        // after `settle` must not resend anything.
        let deadline = Instant::now() + PATIENCE;
        while !cursors_caught_up(ws, &["plain", "tls", "files"])? {
            if Instant::now() > deadline {
                bail!("{phase}: the outputs' cursors did not reach the last change");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(want.len())
    }
}

#[test]
fn forwards_every_record_to_rsyslog_and_ndjson_across_restarts() -> Result<()> {
    let rs_dir = tempfile::tempdir()?;
    let mut rs = Rsyslog::setup(rs_dir.path())?;

    let (args, _) = fixture_sim_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sim = Sim::start(&args)?;
    let ws = Workspace::new()?;
    // Three connectors on the same simulated tenant API: each `once` of a
    // new one writes a fresh set of records (and alerts).
    let connectors: String = ["c1", "c2", "c3"]
        .iter()
        .map(|c| tap_connector(&format!("acme-{c}"), "acme", &sim, "interval_min = 60"))
        .collect();
    ws.write_config(&connectors)?;
    let spool = ws.dir.path().join("spool");
    let fwd_config = ws.dir.path().join("forward.toml");
    std::fs::write(
        &fwd_config,
        format!(
            r#"{host}
[[output]]
name = "plain"
kind = "syslog"
address = "127.0.0.1:{plain}"

[[output]]
name = "tls"
kind = "syslog"
address = "localhost:{tls}"
tls = true
ca_file = "{dir}/ca.pem"
facility = "local4"

[[output]]
name = "wrong-ca"
kind = "syslog"
address = "localhost:{tls}"
tls = true
ca_file = "{dir}/other-ca.pem"

[[output]]
name = "files"
kind = "ndjson"
path = "spool"
rotate_mib = 0.05
indexes = ["syslog", "alerts"]
"#,
            host = ws.host_table(""),
            plain = rs.plain,
            tls = rs.tls,
            dir = rs_dir.path().display()
        ),
    )?;
    let check = Command::new(dphost_bin())
        .args(["check", "--config"])
        .arg(&fwd_config)
        .output()?;
    assert!(check.status.success(), "dphost check: {}", text(&check));

    let collect = |name: &str| -> Result<()> {
        let out = ws.dphost(&["once", "--connector", name])?;
        assert!(out.status.success(), "dphost once: {}", text(&out));
        Ok(())
    };

    // 1. Records written before the forwarder ever ran all go out.
    collect("acme-c1")?;
    let mut fwd = Forwarder::start(&fwd_config, &ws.dir.path().join("run.log"))?;
    let dest = Destinations {
        rs: &rs,
        spool: spool.clone(),
    };
    let n1 = dest.settle(&ws, &fwd, "first start")?;
    assert!(n1 > 10, "only {n1} records to forward");

    // 2. Records written while the forwarder is down (killed) go out after
    //    its restart; nothing already delivered is sent again.
    fwd.crash();
    collect("acme-c2")?;
    fwd.restart()?;
    let n2 = dest.settle(&ws, &fwd, "forwarder restart")?;
    assert!(n2 > n1);

    // 3. Records written while rsyslog is down wait in the store and go out
    //    once it is back.
    drop(dest);
    rs.stop();
    collect("acme-c3")?;
    let refused = format!(
        "cannot connect to the syslog receiver 127.0.0.1:{}",
        rs.plain
    );
    let deadline = Instant::now() + PATIENCE;
    while !fwd.output().contains(&refused) {
        assert!(
            Instant::now() < deadline,
            "the outage was not reported:\n{}",
            fwd.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    rs.start()?;
    let dest = Destinations {
        rs: &rs,
        spool: spool.clone(),
    };
    let n3 = dest.settle(&ws, &fwd, "rsyslog restart")?;
    assert!(n3 > n2);
    fwd.stop();
    let log = fwd.output();

    // TLS is verified: the output trusting an unrelated CA delivered nothing
    // (the TLS log holds each record once, above) and says why.
    assert!(
        log.contains("wrong-ca") && log.contains("invalid peer certificate"),
        "no certificate error for the wrong CA:\n{log}"
    );
    // The NDJSON output rotated (several files, each whole lines).
    let files = ndjson_files(&spool);
    assert!(files.len() >= 3, "no rotation: {files:?}");
    eprintln!(
        "forwarded {n1}, then {n2}, then {n3} records to each of 3 destinations; {} ndjson files",
        files.len()
    );

    // RFC 5424 fields as rsyslog parsed them.
    let msgs = rs.messages("tls");
    let event = msgs
        .iter()
        .find(|m| m["msgid"] == "proofpoint_tap_event")
        .context("no event message")?;
    let alert = msgs
        .iter()
        .find(|m| m["msgid"] == "proofpoint_tap_alert")
        .context("no alert message")?;
    assert_eq!(event["app"], "dphost");
    assert_eq!(event["pri"], "166", "local4.info: {event}");
    let alert_pri: u32 = alert["pri"].as_str().unwrap().parse()?;
    assert!(
        (162..166).contains(&alert_pri),
        "alerts rank above events: {alert}"
    );
    let sd = event["sd"].as_str().unwrap();
    assert!(
        sd.starts_with("[dphost@32473 tenant=\"acme\" connector=\"acme-c")
            && sd.contains("index=\"syslog\""),
        "{sd}"
    );
    let body: Value = serde_json::from_str(event["msg"].as_str().unwrap())?;
    let ts = time::OffsetDateTime::parse(
        event["timestamp"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )?;
    assert_eq!(
        (ts.unix_timestamp_nanos() / 1_000_000) as i64,
        body["timestamp"].as_i64().unwrap(),
        "TIMESTAMP is the record's time"
    );
    assert_eq!(rs.messages("plain")[0]["pri"], "134", "local0 by default");
    Ok(())
}

/// Deliveries at a listener, leaving out messages that are not a whole
/// JSON record (a frame cut short when the sender died): (intact, cut).
fn intact_syslog_deliveries(rs: &Rsyslog, listener: &str) -> (Deliveries, usize) {
    let text = std::fs::read_to_string(rs.dir.join(format!("{listener}.log"))).unwrap_or_default();
    let (mut intact, mut cut) = (Vec::new(), 0);
    for line in text.lines().filter(|l| !l.is_empty()) {
        let parsed = serde_json::from_str::<Value>(line).ok().and_then(|m| {
            let body: Value = serde_json::from_str(m["msg"].as_str()?).ok()?;
            let sd = m["sd"].as_str().unwrap_or("");
            let index = if sd.contains("index=\"alerts\"") {
                "alerts"
            } else {
                "syslog"
            };
            Some((key(index, &body), canonical(&body)))
        });
        match parsed {
            Some(d) => intact.push(d),
            None => cut += 1,
        }
    }
    (intact, cut)
}

/// The forwarder is SIGKILLed while a backlog of thousands of records is on
/// its way (batches acknowledged, the cursor part-way): after a restart
/// every record arrives, at least once, the batch in flight being sent again.
#[test]
fn a_forwarder_killed_mid_backlog_sends_the_rest_and_the_batch_in_flight_again() -> Result<()> {
    let rs_dir = tempfile::tempdir()?;
    let rs = Rsyslog::setup(rs_dir.path())?;
    let sim = Sim::start(&[
        "--seed",
        "12",
        "--rate",
        "30000",
        "--history-hours",
        "1",
        "--max-lag-min",
        "0",
    ])?;
    let ws = Workspace::new()?;
    ws.write_config(&tap_connector(
        "bulk",
        "acme",
        &sim,
        "initial_lookback_hours = 1\ncontent_types = [\"events\"]",
    ))?;
    let run = ws.once()?;
    assert!(run.ok, "{}", run.text);
    let want = stored(&ws)?;
    assert!(want.len() > 10_000, "only {} records", want.len());

    let fwd_config = ws.dir.path().join("forward.toml");
    std::fs::write(
        &fwd_config,
        format!(
            "{}\n[[output]]\nname = \"plain\"\nkind = \"syslog\"\naddress = \"127.0.0.1:{}\"\n",
            ws.host_table(""),
            rs.plain
        ),
    )?;
    let received = || {
        std::fs::metadata(rs_dir.path().join("plain.log"))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let db_count = |sql: &str| ws.scalar(sql);
    let last = db_count("SELECT max(change_seq) FROM records WHERE idx IN ('syslog', 'alerts')")?;
    let mut fwd = Forwarder::start(&fwd_config, &ws.dir.path().join("run.log"))?;
    // Kill it about half a batch (500 messages of some 4 KiB) after it
    // started sending, until a kill lands while a batch is in flight: some
    // of it arrived, and the cursor does not cover it yet.
    let mut attempts = 0;
    let (cursor, before, in_flight) = loop {
        attempts += 1;
        let from = received();
        let deadline = Instant::now() + PATIENCE;
        while received() < from + (1 << 20) {
            if Instant::now() > deadline {
                bail!("rsyslog received nothing more:\n{}", fwd.output());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        fwd.crash();
        // rsyslog writes out what it already received.
        let mut size = received();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            if received() == size {
                break;
            }
            size = received();
        }
        let cursor = db_count(
            "SELECT coalesce(max(change_seq), 0) FROM forward_cursors WHERE output = 'plain'",
        )?;
        assert!(
            cursor < last,
            "delivery finished before a kill landed in a batch (cursor {cursor} of {last}, {attempts} kills): make the backlog larger"
        );
        let covered = db_count(&format!(
            "SELECT count(*) FROM records WHERE idx IN ('syslog', 'alerts') AND change_seq <= {cursor}"
        ))? as usize;
        let (got, _) = intact_syslog_deliveries(&rs, "plain");
        let arrived: BTreeSet<&(String, String)> = got.iter().collect();
        if arrived.len() > covered {
            break (cursor, arrived.len(), arrived.len() - covered);
        }
        assert!(
            attempts < 20,
            "no kill landed inside a batch in {attempts} tries"
        );
        fwd.restart()?;
    };

    fwd.restart()?;
    let deadline = Instant::now() + PATIENCE;
    let (got, cut) = loop {
        let (got, cut) = intact_syslog_deliveries(&rs, "plain");
        match missing(&want, &got) {
            None => break (got, cut),
            Some(m) if Instant::now() > deadline => bail!(
                "after the restart: {m}\n--- dphost run:\n{}\n--- rsyslogd:\n{}",
                fwd.output(),
                rs.output()
            ),
            Some(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    fwd.stop();
    let unknown = got.iter().filter(|(k, _)| !want.contains_key(k)).count();
    assert_eq!(unknown, 0, "deliveries of records the store does not hold");
    let mut distinct = BTreeSet::new();
    let again = got.iter().filter(|d| !distinct.insert(*d)).count();
    // What arrived beyond the cursor was sent again: at least once, not
    // exactly once.
    assert!(
        again >= in_flight,
        "{in_flight} records of the interrupted batch had arrived, {again} arrived twice"
    );
    eprintln!(
        "killed mid-batch after {attempts} kill(s): cursor at {cursor} of {last}, {before} of {} records had arrived ({in_flight} beyond the cursor); after the restart all arrived, {again} twice, {cut} cut short",
        want.len()
    );
    Ok(())
}
