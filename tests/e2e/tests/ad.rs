//! Disable User response action against a real Active Directory: a
//! throwaway Samba AD DC (`tests/ad/samba-dc.sh`, provisioned once for this
//! test binary and shared by its tests, each acting on its own users),
//! tap-sim serving chosen click events, and `dphost once` collecting them,
//! alerting, and performing the queued actions. No LDAP mocks.
//!
//! The DC's users (see the script): alice and wanda (mail,
//! DONT_EXPIRE_PASSWORD), bob (UPN only), carol (proxyAddresses alias), dan,
//! henry, ivan, kim, lena, nick, omar, pat, pia, quinn, rita, sven, tess,
//! uma, vera, dave (Domain Admins), erin (Domain Admins through a nested
//! group), frank, grace (group VIP), yuri (the bind account may not write
//! it), xena (in OU=Staff), Administrator (with a UPN), svc-dphost (the bind
//! account). Every user has the UPN NAME@corp.test.

use anyhow::{bail, Context, Result};
use e2e::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

struct Dc {
    env: BTreeMap<String, String>,
}

static DC: OnceLock<std::result::Result<Dc, String>> = OnceLock::new();

/// The shared DC, started by the first test that needs it; it stops by
/// itself (and deletes its folder) when this test process ends.
fn dc() -> &'static Dc {
    let dc = DC.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dphost-ad-{}", std::process::id()));
        let out = Command::new("bash")
            .arg(root().join("tests/ad/samba-dc.sh"))
            .arg("start")
            .arg(&dir)
            .arg(std::process::id().to_string())
            .output()
            .map_err(|e| format!("cannot run samba-dc.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "samba-dc.sh start failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let text = std::fs::read_to_string(dir.join("env")).map_err(|e| e.to_string())?;
        let env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(Dc { env })
    });
    match dc {
        Ok(dc) => dc,
        Err(e) => panic!("{e}"),
    }
}

impl Dc {
    fn get(&self, key: &str) -> &str {
        &self.env[key]
    }

    /// `ldapsearch` as the domain administrator: one attribute of a user.
    fn attr(&self, sam: &str, attr: &str) -> Result<String> {
        let out = Command::new("ldapsearch")
            .env("LDAPTLS_CACERT", self.get("AD_CA_FILE"))
            .args(["-x", "-LLL", "-o", "ldif-wrap=no", "-H"])
            .arg(self.get("AD_LDAPS_URL"))
            .args([
                "-D",
                self.get("AD_ADMIN_DN"),
                "-w",
                self.get("AD_ADMIN_PASSWORD"),
            ])
            .args(["-b", self.get("AD_BASE_DN")])
            .arg(format!("(sAMAccountName={sam})"))
            .arg(attr)
            .output()?;
        if !out.status.success() {
            bail!("ldapsearch: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8(out.stdout)?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{attr}: ")))
            .map(str::to_string)
            .with_context(|| format!("{sam} has no {attr}: {text}"))
    }

    fn uac(&self, sam: &str) -> i64 {
        self.attr(sam, "userAccountControl")
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Bumped by the DC on every write to the account.
    fn usn(&self, sam: &str) -> i64 {
        self.attr(sam, "uSNChanged").unwrap().parse().unwrap()
    }

    /// Sets userAccountControl as the administrator (test setup only).
    fn set_uac(&self, sam: &str, value: i64) -> Result<()> {
        let ldif = format!(
            "dn: CN={sam},CN=Users,{}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: {value}\n",
            self.get("AD_BASE_DN")
        );
        let mut child = Command::new("ldapmodify")
            .env("LDAPTLS_CACERT", self.get("AD_CA_FILE"))
            .args(["-x", "-H"])
            .arg(self.get("AD_LDAPS_URL"))
            .args([
                "-D",
                self.get("AD_ADMIN_DN"),
                "-w",
                self.get("AD_ADMIN_PASSWORD"),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        use std::io::Write;
        child.stdin.take().unwrap().write_all(ldif.as_bytes())?;
        if !child.wait()?.success() {
            bail!("ldapmodify failed");
        }
        Ok(())
    }
}

/// Click events (one per recipient) from one sender: one alert.
fn write_clicks(dir: &Path, sender: &str, recipients: &[&str]) -> Result<PathBuf> {
    let path = dir.join("clicks.ndjson");
    let lines: Vec<String> = recipients
        .iter()
        .enumerate()
        .map(|(n, r)| {
            json!({
                "GUID": format!("guid-{sender}-{n}"),
                "id": format!("click-{sender}-{n}"),
                "campaignId": "campaign-1",
                "classification": "phish",
                "clickIP": "192.0.2.10",
                "clickTime": "2026-01-01T10:00:00.000Z",
                "threatTime": "2026-01-01T10:00:00.000Z",
                "recipient": r,
                "sender": sender,
                "senderIP": "192.0.2.20",
                "threatID": format!("threat-{sender}"),
                "threatStatus": "active",
                "threatURL": "https://threatinsight.proofpoint.com/x",
                "url": "https://bad.example.net/login",
                "userAgent": "Mozilla/5.0",
                "messageID": format!("<{n}@bad.example.net>"),
            })
            .to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n")?;
    Ok(path)
}

struct Setup {
    ws: Workspace,
    _sims: Vec<Sim>,
}

/// One TAP connector of a workspace: its sim serves `recipients`' clicks
/// from `sender` (one alert).
struct Conn<'a> {
    name: &'a str,
    sender: &'a str,
    recipients: &'a [&'a str],
    policy_extra: &'a str,
}

/// A workspace whose TAP connector collects `recipients`' clicks from tap-sim
/// and whose response policy targets the test DC.
fn setup(
    sender: &str,
    recipients: &[&str],
    ad_extra: &str,
    policy_extra: &str,
    clock: Option<&SimClock>,
) -> Result<Setup> {
    setup_many(
        &[Conn {
            name: "acme-tap",
            sender,
            recipients,
            policy_extra,
        }],
        ad_extra,
        clock,
    )
}

/// A workspace with several TAP connectors (each with its own tap-sim) and
/// the `[[ad]]` target `corp`; keys in `ad_extra` replace the defaults.
fn setup_many(conns: &[Conn], ad_extra: &str, clock: Option<&SimClock>) -> Result<Setup> {
    let dc = dc();
    let ws = Workspace::new()?;
    let mut sims = Vec::new();
    let mut connectors = String::new();
    for c in conns {
        let dir = ws.dir.path().join(c.name);
        std::fs::create_dir_all(&dir)?;
        let events = write_clicks(&dir, c.sender, c.recipients)?;
        let mut args: Vec<String> = vec![
            "--events".into(),
            events.display().to_string(),
            "--events-type".into(),
            "clicksPermitted".into(),
            "--retime".into(),
            "--max-lag-min".into(),
            "0".into(),
        ];
        if let Some(c) = clock {
            args.extend(["--clock-file".into(), c.path().display().to_string()]);
        }
        let sim = Sim::start(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        connectors.push_str(&tap_connector(
            c.name,
            "acme",
            &sim,
            &format!(
                "initial_lookback_hours = 1\n[connector.response.disable_user]\nenabled = true\nad = \"corp\"\non = [\"clickDelivered\"]\n{}\n",
                c.policy_extra
            ),
        ));
        sims.push(sim);
    }
    std::fs::write(
        ws.dir.path().join("ad-password"),
        dc.get("AD_BIND_PASSWORD"),
    )?;
    let host_extra = clock
        .map(|c| format!("clock_file = \"{}\"\n", c.path().display()))
        .unwrap_or_default();
    let mut ad = String::from("[[ad]]\nname = \"corp\"\n");
    for (key, value) in [
        ("bind_dn", dc.get("AD_BIND_DN")),
        ("password_file", "ad-password"),
        ("base_dn", dc.get("AD_BASE_DN")),
        ("ca_file", dc.get("AD_CA_FILE")),
    ] {
        if !ad_extra
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{key} ")))
        {
            ad.push_str(&format!("{key} = \"{value}\"\n"));
        }
    }
    ad.push_str(ad_extra);
    std::fs::write(
        ws.config_path(),
        format!(
            "[host]\ndata_dir = \"data\"\ncomponents_dir = \"components\"\n{host_extra}\n{ad}\n\n{connectors}"
        ),
    )?;
    Ok(Setup { ws, _sims: sims })
}

const LDAPS: &str = "url = \"ldaps://127.0.0.1:636\"";
const STARTTLS: &str = "url = \"ldap://127.0.0.1:389\"\nstarttls = true";

/// Audit records of the Actions index matching `query`.
fn audit(ws: &Workspace, query: &str) -> Vec<Value> {
    ws.search("actions", query).unwrap()
}

fn targets(records: &[Value]) -> Vec<String> {
    let mut t: Vec<String> = records
        .iter()
        .map(|r| r["action"]["target"].as_str().unwrap().to_string())
        .collect();
    t.sort();
    t
}

fn once(ws: &Workspace, fault: Option<&str>) -> Result<std::process::Output> {
    Ok(once_cmd(ws, fault, None).output()?)
}

/// `dphost once` (of one connector, if given), optionally crashing at `fault`.
fn once_cmd(ws: &Workspace, fault: Option<&str>, connector: Option<&str>) -> Command {
    let mut cmd = Command::new(dphost_bin());
    cmd.arg("once").arg("--config").arg(ws.config_path());
    if let Some(c) = connector {
        cmd.args(["--connector", c]);
    }
    cmd.env_remove("RUST_LOG");
    if let Some(f) = fault {
        cmd.env("DPHOST_TEST_FAULT", f);
    }
    cmd
}

/// `dphost once` that must succeed; its stdout.
fn once_ok(ws: &Workspace) -> Result<String> {
    let out = once(ws, None)?;
    if !out.status.success() {
        bail!("dphost once failed: {}", text(&out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn message(record: &Value) -> &str {
    record["message"].as_str().unwrap_or_default()
}

#[test]
fn a_click_for_two_recipients_disables_both_over_ldaps() -> Result<()> {
    let dc = dc();
    let (alice_before, bob_before) = (dc.uac("alice"), dc.uac("bob"));
    assert_eq!(
        alice_before, 0x10200,
        "alice: NORMAL_ACCOUNT | DONT_EXPIRE_PASSWORD"
    );
    assert_eq!(bob_before, 0x200);
    // alice by mail, bob by his UPN alone.
    let s = setup(
        "evil@bad.example.net",
        &["alice.mail@corp.test", "bob@corp.test"],
        LDAPS,
        "",
        None,
    )?;
    let out = once(&s.ws, None)?;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("response actions: 2 done, 2 requested"),
        "{stdout}"
    );

    let alerts = s.ws.search("alerts", "*")?;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["alert"]["type"], "Proofpoint TAP clickDelivered");
    // The disable bit is set and every other bit is as it was.
    assert_eq!(dc.uac("alice"), alice_before | 2);
    assert_eq!(dc.uac("bob"), bob_before | 2);

    let done = audit(&s.ws, "event_type:done");
    assert_eq!(
        targets(&done),
        vec!["alice.mail@corp.test", "bob@corp.test"]
    );
    for d in &done {
        assert_eq!(d["alert"]["id"], alerts[0]["alert"]["id"]);
        assert_eq!(d["action"]["kind"], "disable-user");
        assert_eq!(d["tenant_name"], "acme");
    }
    let alice = done.iter().find(|d| d["user"]["name"] == "alice").unwrap();
    assert_eq!(alice["user"]["user_account_control"]["before"], 0x10200);
    assert_eq!(alice["user"]["user_account_control"]["after"], 0x10202);
    assert_eq!(audit(&s.ws, "event_type:requested").len(), 2);

    // Status counts the outcomes and shows the last one.
    let out = s.ws.dphost(&["status", "--format", "json"])?;
    let status: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        status["connectors"][0]["actions"]["by_outcome"]["done"], 2,
        "{status}"
    );
    let out = s.ws.dphost(&["status"])?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("response actions: 2 done"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn repeated_collection_crashes_and_restarts_disable_nobody_twice_over_starttls() -> Result<()> {
    let dc = dc();
    // carol through a proxyAddresses alias, dan by mail.
    let s = setup(
        "crash@bad.example.net",
        &["carol.alias@corp.test", "dan.mail@corp.test"],
        STARTTLS,
        "",
        None,
    )?;
    // A crash right after the commit: actions queued, none performed.
    let out = once(&s.ws, Some("after-collect"))?;
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(s.ws.search("alerts", "*")?.len(), 1);
    assert_eq!(dc.uac("carol"), 0x200);
    assert_eq!(dc.uac("dan"), 0x200);
    assert!(audit(&s.ws, "*").is_empty(), "nothing performed yet");

    // Collected again and crashed right after writing the first account,
    // before recording it.
    let out = once(&s.ws, Some("after-modify"))?;
    assert!(!out.status.success(), "{}", text(&out));
    let written: Vec<&str> = ["carol", "dan"]
        .into_iter()
        .filter(|u| dc.uac(u) & 2 != 0)
        .collect();
    assert_eq!(written.len(), 1, "one write went out before the crash");
    assert!(audit(&s.ws, "event_type:done").is_empty());

    // The restart finishes both; the interrupted write is recognised as ours.
    let out = once(&s.ws, None)?;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(dc.uac("carol"), 0x202);
    assert_eq!(dc.uac("dan"), 0x202);
    let usn = (dc.usn("carol"), dc.usn("dan"));

    // More collection and restarts: no write, no new action.
    for _ in 0..2 {
        let out = once(&s.ws, None)?;
        assert!(out.status.success(), "{}", text(&out));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("response actions"));
    }
    assert_eq!(
        (dc.usn("carol"), dc.usn("dan")),
        usn,
        "nobody written twice"
    );
    let done = audit(&s.ws, "event_type:done");
    assert_eq!(
        targets(&done),
        vec!["carol.alias@corp.test", "dan.mail@corp.test"]
    );
    assert!(audit(&s.ws, "event_type:already-disabled").is_empty());
    assert_eq!(audit(&s.ws, "event_type:requested").len(), 2);
    Ok(())
}

#[test]
fn guardrails_skip_admins_and_protected_accounts_and_unknown_addresses_are_not_found() -> Result<()>
{
    let dc = dc();
    let injection = "x*)(mail=*";
    let recipients = [
        "dave.mail@corp.test",     // Domain Admins
        "erin.mail@corp.test",     // Domain Admins through IT Ops
        "frank.mail@corp.test",    // protected by name
        "grace.mail@corp.test",    // protected group VIP
        "svc-dphost@corp.test",    // the bind account
        "Administrator@corp.test", // RID 500 (and Domain Admins)
        "nobody@corp.test",
        injection,
        "*",
    ];
    let s = setup(
        "guard@bad.example.net",
        &recipients,
        &format!("{LDAPS}\nprotected = [\"frank.mail@corp.test\", \"VIP\"]"),
        "",
        None,
    )?;
    let watched = [
        "dave",
        "erin",
        "frank",
        "grace",
        "svc-dphost",
        "Administrator",
        "kim",
    ];
    let usns: Vec<i64> = watched.iter().map(|u| dc.usn(u)).collect();
    let out = once(&s.ws, None)?;
    assert!(out.status.success(), "{}", text(&out));

    let skipped = audit(&s.ws, "event_type:skipped-protected");
    let why: BTreeMap<String, String> = skipped
        .iter()
        .map(|r| {
            (
                r["user"]["name"].as_str().unwrap().to_string(),
                r["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        why.keys().collect::<Vec<_>>(),
        vec![
            "Administrator",
            "dave",
            "erin",
            "frank",
            "grace",
            "svc-dphost"
        ],
        "{why:#?}"
    );
    assert!(
        why["Administrator"].contains("built-in Administrator (RID 500)"),
        "{}",
        why["Administrator"]
    );
    assert!(why["dave"].contains("Domain Admins"), "{}", why["dave"]);
    assert!(why["erin"].contains("Domain Admins"), "{}", why["erin"]);
    assert!(why["frank"].contains("protected list"), "{}", why["frank"]);
    assert!(
        why["grace"].contains("protected group `VIP`"),
        "{}",
        why["grace"]
    );
    assert!(
        why["svc-dphost"].contains("bind account"),
        "{}",
        why["svc-dphost"]
    );

    let not_found = audit(&s.ws, "event_type:not-found");
    assert_eq!(
        targets(&not_found),
        vec!["*", "nobody@corp.test", injection],
        "the injection and the wildcard find nobody"
    );
    // Nobody was written to (kim stands for every other account).
    let after: Vec<i64> = watched.iter().map(|u| dc.usn(u)).collect();
    assert_eq!(after, usns);
    assert!(audit(&s.ws, "event_type:done").is_empty());
    Ok(())
}

#[test]
fn plain_ldap_is_refused_and_a_wrong_password_is_explained() -> Result<()> {
    let dc = dc();
    // Plain LDAP without StartTLS: the configuration is refused.
    let s = setup(
        "plain@bad.example.net",
        &["kim.mail@corp.test"],
        "url = \"ldap://127.0.0.1:389\"",
        "",
        None,
    )?;
    let out = s.ws.dphost(&["check"])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is plain LDAP: dphost refuses to send the bind password unencrypted"),
        "{err}"
    );

    // A wrong bind password: the action waits, explained (49 / data 52e).
    let s = setup(
        "badpw@bad.example.net",
        &["kim.mail@corp.test"],
        LDAPS,
        "",
        None,
    )?;
    std::fs::write(s.ws.dir.path().join("ad-password"), "not-the-password")?;
    let out = once(&s.ws, None)?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("bind failed: the bind password is wrong (data 52e)"),
        "{stdout}"
    );
    let failed = audit(&s.ws, "event_type:failed");
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["message"].as_str().unwrap().contains("data 52e"));
    assert!(failed[0]["message"]
        .as_str()
        .unwrap()
        .contains("retrying in"));
    assert_eq!(dc.uac("kim"), 0x200);
    let out = s.ws.dphost(&["status", "--format", "json"])?;
    let status: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        status["connectors"][0]["actions"]["by_outcome"]["retrying"], 1,
        "{status}"
    );
    Ok(())
}

#[test]
fn dry_run_records_what_would_be_done() -> Result<()> {
    let dc = dc();
    let s = setup(
        "dry@bad.example.net",
        &["kim.mail@corp.test"],
        STARTTLS,
        "dry_run = true",
        None,
    )?;
    let usn = dc.usn("kim");
    let out = once(&s.ws, None)?;
    assert!(out.status.success(), "{}", text(&out));
    let dry = audit(&s.ws, "event_type:dry-run");
    assert_eq!(dry.len(), 1);
    assert!(
        dry[0]["message"]
            .as_str()
            .unwrap()
            .contains("would disable"),
        "{dry:?}"
    );
    assert_eq!(dry[0]["user"]["user_account_control"]["after"], 0x202);
    assert_eq!(dc.usn("kim"), usn, "a dry run writes nothing");
    Ok(())
}

#[test]
fn a_limited_duration_reenables_only_what_it_disabled() -> Result<()> {
    let dc = dc();
    let dir = tempfile::tempdir()?;
    let mut clock = SimClock::new(dir.path(), time::OffsetDateTime::now_utc())?;
    // ivan was disabled by someone else before: not ours to re-enable.
    dc.set_uac("ivan", 0x202)?;
    assert_eq!(dc.uac("wanda"), 0x10200, "wanda: DONT_EXPIRE_PASSWORD");
    let s = setup(
        "timed@bad.example.net",
        &[
            "henry.mail@corp.test",
            "ivan.mail@corp.test",
            "vera.mail@corp.test",
            "wanda.mail@corp.test",
        ],
        STARTTLS,
        "duration = \"4h\"",
        Some(&clock),
    )?;
    once_ok(&s.ws)?;
    assert_eq!(dc.uac("henry"), 0x202);
    assert_eq!(dc.uac("vera"), 0x202);
    assert_eq!(dc.uac("wanda"), 0x10202);
    assert_eq!(
        targets(&audit(&s.ws, "event_type:already-disabled")),
        vec!["ivan.mail@corp.test"]
    );

    // Before expiry nothing changes; an administrator re-enables vera.
    clock.advance(time::Duration::hours(3))?;
    once_ok(&s.ws)?;
    assert_eq!(dc.uac("henry"), 0x202);
    dc.set_uac("vera", 0x200)?;
    let vera_usn = dc.usn("vera");

    clock.advance(time::Duration::hours(2))?;
    let stdout = once_ok(&s.ws)?;
    assert!(
        stdout.contains("1 re-enable-skipped, 2 re-enabled"),
        "{stdout}"
    );
    assert_eq!(dc.uac("henry"), 0x200, "re-enabled at expiry");
    // Only bit 0x2 is cleared: DONT_EXPIRE_PASSWORD stays.
    assert_eq!(dc.uac("wanda"), 0x10200);
    assert_eq!(dc.uac("ivan"), 0x202, "not ours: left disabled");
    let re = audit(&s.ws, "event_type:re-enabled");
    assert_eq!(
        targets(&re),
        vec!["henry.mail@corp.test", "wanda.mail@corp.test"]
    );
    let wanda = re.iter().find(|r| r["user"]["name"] == "wanda").unwrap();
    assert_eq!(wanda["user"]["user_account_control"]["before"], 0x10202);
    assert_eq!(wanda["user"]["user_account_control"]["after"], 0x10200);
    // Enabled by someone else: its own state, and nothing written.
    let skipped = audit(&s.ws, "event_type:re-enable-skipped");
    assert_eq!(targets(&skipped), vec!["vera.mail@corp.test"]);
    assert!(
        message(&skipped[0]).contains("enabled again by someone else")
            && message(&skipped[0]).contains("nothing changed"),
        "{skipped:?}"
    );
    assert_eq!(dc.usn("vera"), vera_usn);
    // Once only.
    clock.advance(time::Duration::hours(1))?;
    once_ok(&s.ws)?;
    assert_eq!(audit(&s.ws, "event_type:re-enabled").len(), 2);
    assert_eq!(audit(&s.ws, "event_type:re-enable-skipped").len(), 1);
    Ok(())
}

#[test]
fn dphost_run_performs_queued_actions_as_they_come() -> Result<()> {
    let dc = dc();
    let s = setup(
        "run@bad.example.net",
        &["lena.mail@corp.test"],
        LDAPS,
        "",
        None,
    )?;
    let mut child = Command::new(dphost_bin())
        .arg("run")
        .arg("--config")
        .arg(s.ws.config_path())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // The scheduler collects at start and the worker polls the outbox: wait
    // (bounded) for the audit to say it is done.
    let mut done = Vec::new();
    for _ in 0..600 {
        done = audit(&s.ws, "event_type:done");
        if !done.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(targets(&done), vec!["lena.mail@corp.test"]);
    assert_eq!(dc.uac("lena"), 0x202);
    Ok(())
}

/// Time passes for the worker (the clock file) and its backoffs.
fn hours(n: i64) -> time::Duration {
    time::Duration::hours(n)
}

#[test]
fn two_processes_at_once_perform_each_action_once() -> Result<()> {
    let dc = dc();
    let dir = tempfile::tempdir()?;
    let mut clock = SimClock::new(dir.path(), time::OffsetDateTime::now_utc())?;
    let users = ["pat", "quinn", "rita", "sven"];
    let recipients: Vec<String> = users
        .iter()
        .map(|u| format!("{u}.mail@corp.test"))
        .collect();
    let recipients: Vec<&str> = recipients.iter().map(String::as_str).collect();
    let s = setup(
        "twice@bad.example.net",
        &recipients,
        LDAPS,
        "duration = \"1h\"",
        Some(&clock),
    )?;
    // Queued, none performed.
    let out = once(&s.ws, Some("after-collect"))?;
    assert!(!out.status.success(), "{}", text(&out));
    // Two processes on one store at once, each pass slowed down so that
    // they surely overlap.
    let children: Vec<_> = (0..2)
        .map(|_| {
            once_cmd(&s.ws, None, None)
                .env("DPHOST_TEST_ACTION_DELAY_MS", "500")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output())
        .collect::<std::io::Result<_>>()?;
    for out in &outs {
        assert!(out.status.success(), "{}", text(out));
    }
    let stdouts: Vec<String> = outs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .collect();
    assert!(
        stdouts
            .iter()
            .any(|o| o.contains("another dphost process (pid")
                && o.contains("performs the response actions on this store")),
        "one of them left the actions to the other: {stdouts:#?}"
    );
    for u in users {
        assert_eq!(dc.uac(u), 0x202, "{u}");
    }
    // Each account written once, by one of them.
    assert_eq!(targets(&audit(&s.ws, "event_type:done")), recipients);
    assert!(audit(&s.ws, "event_type:already-disabled").is_empty());
    assert_eq!(audit(&s.ws, "event_type:requested").len(), 4);
    // And recorded as ours: re-enabled at expiry.
    clock.advance(hours(2))?;
    let stdout = once_ok(&s.ws)?;
    assert!(stdout.contains("4 re-enabled"), "{stdout}");
    for u in users {
        assert_eq!(dc.uac(u), 0x200, "{u}");
    }
    Ok(())
}

#[test]
fn overlapping_alerts_keep_the_account_disabled_until_the_last_one_ends() -> Result<()> {
    let dc = dc();
    let dir = tempfile::tempdir()?;
    let mut clock = SimClock::new(dir.path(), time::OffsetDateTime::now_utc())?;
    let uma = ["uma.mail@corp.test"];
    let s = setup_many(
        &[
            Conn {
                name: "tap-short",
                sender: "short@bad.example.net",
                recipients: &uma,
                policy_extra: "duration = \"4h\"",
            },
            Conn {
                name: "tap-long",
                sender: "long@bad.example.net",
                recipients: &uma,
                policy_extra: "duration = \"8h\"",
            },
        ],
        LDAPS,
        Some(&clock),
    )?;
    // Alert 1 (4 h) disables uma; alert 2 (8 h) finds her disabled by us.
    let out = once_cmd(&s.ws, None, Some("tap-short")).output()?;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(dc.uac("uma"), 0x202);
    let out = once_cmd(&s.ws, None, Some("tap-long")).output()?;
    assert!(out.status.success(), "{}", text(&out));
    let already = audit(&s.ws, "event_type:already-disabled");
    assert_eq!(already.len(), 1);
    assert_eq!(already[0]["connector"], "tap-long");
    assert!(
        message(&already[0]).contains("by dphost's action for uma.mail@corp.test"),
        "{already:?}"
    );

    // Alert 1 ends: alert 2 still wants her disabled, and takes over.
    clock.advance(hours(5))?;
    let stdout = once_ok(&s.ws)?;
    assert!(stdout.contains("1 handed-over"), "{stdout}");
    assert_eq!(dc.uac("uma"), 0x202, "still wanted disabled");
    let handed = audit(&s.ws, "event_type:handed-over");
    assert_eq!(handed.len(), 1);
    assert_eq!(handed[0]["connector"], "tap-short");
    assert_eq!(
        handed[0]["handed_over_to"]["alert_id"],
        already[0]["alert"]["id"]
    );
    assert!(message(&handed[0]).contains("stays disabled"), "{handed:?}");
    assert!(audit(&s.ws, "event_type:re-enabled").is_empty());

    // Alert 2 ends: the last one re-enables her, since we set the bit.
    clock.advance(hours(4))?;
    let stdout = once_ok(&s.ws)?;
    assert!(stdout.contains("1 re-enabled"), "{stdout}");
    assert_eq!(dc.uac("uma"), 0x200);
    let re = audit(&s.ws, "event_type:re-enabled");
    assert_eq!(re.len(), 1);
    assert_eq!(re[0]["connector"], "tap-long");
    let out = s.ws.dphost(&["status", "--format", "json"])?;
    let status: Value = serde_json::from_slice(&out.stdout)?;
    let short = status["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["connector"] == "tap-short")
        .unwrap();
    assert_eq!(short["actions"]["by_outcome"]["handed-over"], 1, "{status}");
    Ok(())
}

#[test]
fn a_crash_before_the_write_resumes_and_a_change_meanwhile_is_not_taken_for_ours() -> Result<()> {
    let dc = dc();
    // Crash with the intent recorded, the write not sent.
    let s = setup(
        "before@bad.example.net",
        &["nick.mail@corp.test"],
        STARTTLS,
        "",
        None,
    )?;
    let usn = dc.usn("nick");
    let out = once(&s.ws, Some("before-modify"))?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("aborting at before-modify"),
        "{}",
        text(&out)
    );
    assert_eq!(dc.uac("nick"), 0x200, "nothing was sent");
    assert_eq!(dc.usn("nick"), usn);
    assert!(audit(&s.ws, "event_type:done").is_empty());
    // The restart (which takes over the dead process's lease) writes it once.
    once_ok(&s.ws)?;
    assert_eq!(dc.uac("nick"), 0x202);
    assert_eq!(
        targets(&audit(&s.ws, "event_type:done")),
        vec!["nick.mail@corp.test"]
    );
    assert!(audit(&s.ws, "event_type:already-disabled").is_empty());

    // Crash at the same point, then an administrator disables omar (and sets
    // another flag) while dphost is down: not ours, never re-enabled.
    let dir = tempfile::tempdir()?;
    let mut clock = SimClock::new(dir.path(), time::OffsetDateTime::now_utc())?;
    let s = setup(
        "meanwhile@bad.example.net",
        &["omar.mail@corp.test"],
        LDAPS,
        "duration = \"1h\"",
        Some(&clock),
    )?;
    let out = once(&s.ws, Some("before-modify"))?;
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(dc.uac("omar"), 0x200);
    dc.set_uac("omar", 0x10202)?;
    once_ok(&s.ws)?;
    let already = audit(&s.ws, "event_type:already-disabled");
    assert_eq!(already.len(), 1, "{already:?}");
    assert!(
        message(&already[0]).contains("by someone else"),
        "{already:?}"
    );
    assert!(audit(&s.ws, "event_type:done").is_empty());
    clock.advance(hours(2))?;
    once_ok(&s.ws)?;
    assert_eq!(dc.uac("omar"), 0x10202, "left as the administrator set it");
    assert!(audit(&s.ws, "event_type:re-enabled").is_empty());
    Ok(())
}

#[test]
fn a_ca_that_did_not_sign_the_certificate_is_refused_over_ldaps_and_starttls() -> Result<()> {
    let dc = dc();
    for url in [LDAPS, STARTTLS] {
        let s = setup(
            "ca@bad.example.net",
            &["kim.mail@corp.test"],
            &format!("{url}\nca_file = \"{}\"", dc.get("AD_OTHER_CA_FILE")),
            "",
            None,
        )?;
        let usn = dc.usn("kim");
        let out = once(&s.ws, None)?;
        assert_eq!(out.status.code(), Some(1), "{url}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("TLS failed (invalid peer certificate: UnknownIssuer)")
                && stdout.contains(
                    "check that `ca_file` holds the CA that issued the domain controller's certificate"
                ),
            "{url}: {stdout}"
        );
        let failed = audit(&s.ws, "event_type:failed");
        assert_eq!(failed.len(), 1, "{url}");
        assert!(message(&failed[0]).contains("TLS failed"), "{failed:?}");
        assert!(
            message(&failed[0]).contains("retrying in 30s"),
            "{failed:?}"
        );
        assert_eq!(dc.usn("kim"), usn, "{url}");
    }
    Ok(())
}

#[test]
fn two_addresses_of_one_person_in_one_alert_write_the_account_once() -> Result<()> {
    let dc = dc();
    // pia by her mail and by her UPN.
    let s = setup(
        "both@bad.example.net",
        &["pia.mail@corp.test", "pia@corp.test"],
        LDAPS,
        "",
        None,
    )?;
    let stdout = once_ok(&s.ws)?;
    assert!(
        stdout.contains("1 already-disabled, 1 done, 2 requested"),
        "{stdout}"
    );
    assert_eq!(dc.uac("pia"), 0x202);
    let done = audit(&s.ws, "event_type:done");
    let already = audit(&s.ws, "event_type:already-disabled");
    assert_eq!((done.len(), already.len()), (1, 1));
    assert_eq!(done[0]["alert"]["id"], already[0]["alert"]["id"]);
    // Recognised as the same account, done by this alert.
    let first = done[0]["action"]["target"].as_str().unwrap();
    assert!(
        message(&already[0]).contains(&format!(
            "is also the account of {first}, which this alert's action disabled"
        )),
        "{already:?}"
    );
    Ok(())
}

#[test]
fn a_bind_dn_outside_base_dn_is_refused_and_nobody_is_disabled() -> Result<()> {
    let dc = dc();
    let dir = tempfile::tempdir()?;
    let mut clock = SimClock::new(dir.path(), time::OffsetDateTime::now_utc())?;
    // svc-dphost lives in CN=Users: under OU=Staff the guardrail "never the
    // bind account" cannot recognise it.
    let s = setup(
        "staff@bad.example.net",
        &["xena.mail@corp.test"],
        &format!("{LDAPS}\nbase_dn = \"OU=Staff,{}\"", dc.get("AD_BASE_DN")),
        "",
        Some(&clock),
    )?;
    for (n, retry) in [(1, "retrying in 30s"), (2, "retrying in 1m")] {
        let out = once(&s.ws, None)?;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("bind_dn `svc-dphost@corp.test` resolves to no account under OU=Staff,DC=corp,DC=test"),
            "{stdout}"
        );
        let failed = audit(&s.ws, "event_type:failed");
        assert_eq!(failed.len(), n);
        assert!(
            message(&failed[n - 1]).contains("no account is disabled until it resolves")
                && message(&failed[n - 1]).contains(retry),
            "{failed:?}"
        );
        assert_eq!(dc.uac("xena"), 0x200);
        clock.advance(time::Duration::minutes(2))?;
    }
    Ok(())
}

#[test]
fn connection_retries_do_not_use_up_the_attempts_the_dc_may_refuse() -> Result<()> {
    let dc = dc();
    let dir = tempfile::tempdir()?;
    let mut clock = SimClock::new(dir.path(), time::OffsetDateTime::now_utc())?;
    // The bind account may not write yuri's userAccountControl.
    let s = setup(
        "refused@bad.example.net",
        &["yuri.mail@corp.test"],
        LDAPS,
        "",
        Some(&clock),
    )?;
    let password = s.ws.dir.path().join("ad-password");
    std::fs::write(&password, "not-the-password")?;
    for _ in 0..4 {
        let out = once(&s.ws, None)?;
        assert!(String::from_utf8_lossy(&out.stdout).contains("data 52e"));
        clock.advance(hours(1))?;
    }
    std::fs::write(&password, dc.get("AD_BIND_PASSWORD"))?;
    // Five refusals, however many connection problems came before.
    for n in 1..=5 {
        let out = once(&s.ws, None)?;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let failed = audit(&s.ws, "event_type:failed");
        let last = message(failed.last().unwrap());
        assert!(last.contains("insufficientAccessRights"), "{last}");
        // A refused write leaves no intent behind, which a later disable by
        // someone else could be taken for.
        let intents: i64 = s.ws.db()?.query_row(
            "SELECT count(*) FROM response_accounts WHERE state = 'intent'",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(intents, 0, "refusal {n}");
        if n < 5 {
            assert!(last.contains("retrying in"), "refusal {n}: {last}");
        } else {
            assert!(
                last.contains("given up after 5 attempts the domain controller refused"),
                "{last}"
            );
        }
        clock.advance(hours(1))?;
    }
    assert_eq!(audit(&s.ws, "event_type:failed").len(), 9);
    // Given up: no more attempts.
    once_ok(&s.ws)?;
    assert_eq!(audit(&s.ws, "event_type:failed").len(), 9);
    assert_eq!(dc.uac("yuri"), 0x200);
    Ok(())
}

#[test]
fn a_failed_reenable_is_audited_and_backed_off() -> Result<()> {
    let dc = dc();
    let dir = tempfile::tempdir()?;
    let mut clock = SimClock::new(dir.path(), time::OffsetDateTime::now_utc())?;
    let s = setup(
        "later@bad.example.net",
        &["tess.mail@corp.test"],
        STARTTLS,
        "duration = \"1h\"",
        Some(&clock),
    )?;
    once_ok(&s.ws)?;
    assert_eq!(dc.uac("tess"), 0x202);
    // At expiry the DC cannot be bound to.
    let password = s.ws.dir.path().join("ad-password");
    std::fs::write(&password, "not-the-password")?;
    clock.advance(time::Duration::minutes(61))?;
    let out = once(&s.ws, None)?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let failed = audit(&s.ws, "event_type:failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["phase"], "re-enable");
    assert!(
        message(&failed[0]).contains("re-enabling the account(s) of tess.mail@corp.test")
            && message(&failed[0]).contains("data 52e")
            && message(&failed[0]).ends_with("retrying in 30s"),
        "{failed:?}"
    );
    // Within the backoff: not tried, not audited again.
    clock.advance(time::Duration::seconds(10))?;
    once_ok(&s.ws)?;
    assert_eq!(audit(&s.ws, "event_type:failed").len(), 1);
    std::fs::write(&password, dc.get("AD_BIND_PASSWORD"))?;
    clock.advance(time::Duration::seconds(30))?;
    let stdout = once_ok(&s.ws)?;
    assert!(stdout.contains("1 re-enabled"), "{stdout}");
    assert_eq!(dc.uac("tess"), 0x200);
    Ok(())
}

#[test]
fn response_policy_problems_name_their_file_and_line_in_dphost_check() -> Result<()> {
    // No DC needed: the configuration is refused before anything runs.
    let ws = Workspace::new()?;
    std::fs::write(ws.dir.path().join("ca.pem"), "x")?;
    let config = "\
[host]
data_dir = \"data\"
components_dir = \"components\"

[[ad]]
name = \"corp\"
url = \"ldaps://127.0.0.1:636\"
bind_dn = \"svc@corp.test\"
password_env = \"AD_PW\"
base_dn = \"DC=corp,DC=test\"
ca_file = \"ca.pem\"

[[connector]]
name = \"acme-tap\"
tenant = \"acme\"
component = \"proofpoint_tap\"
host_url = \"https://tap-api-v2.proofpoint.com\"
principal = \"p\"
secret = \"s\"
[connector.response.disable_user]
enabled = true
on = [\"clickDelivered\"]
bogus = 1
[connector.response.quarantine]
enabled = true
";
    std::fs::write(ws.config_path(), config)?;
    let line = |needle: &str| config.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    let out = ws.dphost(&["check"])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&ws.config_path().display().to_string()),
        "{err}"
    );
    for want in [
        format!(
            "line {}: connector `acme-tap`: response.disable_user is enabled but names no AD target",
            line("enabled = true")
        ),
        format!(
            "line {}: connector `acme-tap`: unknown key `response.disable_user.bogus`",
            line("bogus")
        ),
        format!(
            "line {}: connector `acme-tap`: unknown response action `response.quarantine`",
            line("[connector.response.quarantine]")
        ),
    ] {
        assert!(err.contains(&want), "{want}: {err}");
    }
    Ok(())
}
