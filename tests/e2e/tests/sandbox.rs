//! The sandbox boundary, probed by a hostile component (`tests/probe`) run
//! beside a healthy TAP connector of another tenant.

use anyhow::Result;
use e2e::*;

fn probe(name: &str, tenant: &str, host_url: &str, extra: &str) -> String {
    format!(
        "[[connector]]\nname = \"{name}\"\ntenant = \"{tenant}\"\ncomponent = \"sandbox_probe\"\nhost_url = \"{host_url}\"\nprincipal = \"{PRINCIPAL}\"\nsecret = \"{SECRET}\"\n{extra}\n"
    )
}

#[test]
fn requests_leave_only_for_the_connectors_own_authority_with_host_credentials() -> Result<()> {
    let sim = Sim::start(&["--rate", "0"])?;
    let other = Sim::start(&["--rate", "0"])?;
    let ws = Workspace::new()?;
    let own = format!(
        "{}/v2/siem/clicks/blocked?format=json&sinceSeconds=60",
        sim.url
    );
    let elsewhere = format!(
        "{}/v2/siem/clicks/blocked?format=json&sinceSeconds=60",
        other.url
    );
    // The same port under another name for the host is another authority.
    let by_other_name = own.replace("127.0.0.1", "localhost");
    let metadata = "http://169.254.169.254/latest/meta-data/".to_string();
    let mut config = String::new();
    for (i, target) in [&own, &elsewhere, &by_other_name, &metadata]
        .iter()
        .enumerate()
    {
        config.push_str(&probe(
            &format!("probe-{i}"),
            "mallory",
            &sim.url,
            &format!("probe = \"http\"\ntarget_url = \"{target}\""),
        ));
    }
    ws.write_config(&config)?;
    let out = ws.dphost(&["once"])?;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let outcome = |i: usize| -> String {
        let rec = ws
            .search(
                "syslog",
                &format!(
                    "msg_class:probe url:\"{}\"",
                    [&own, &elsewhere, &by_other_name, &metadata][i]
                ),
            )
            .unwrap();
        assert_eq!(rec.len(), 1, "{stdout}");
        rec[0]["outcome"].as_str().unwrap().to_string()
    };
    // Its own authority: 200, although the component never had (and could
    // not set) the credentials: the host injected them.
    assert_eq!(outcome(0), "status 200; authorization header refused: true");
    for i in 1..4 {
        assert!(
            outcome(i).starts_with("denied;"),
            "request {i} was not refused: {}",
            outcome(i)
        );
    }
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused an HTTP request"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn the_component_never_sees_the_secret() -> Result<()> {
    let sim = Sim::start(&["--rate", "0"])?;
    let ws = Workspace::new()?;
    ws.write_config(&probe("snoop", "mallory", &sim.url, "probe = \"snoop\""))?;
    let out = ws.dphost(&["once"])?;
    assert!(out.status.success(), "{}", text(&out));
    let seen = ws.search("syslog", "msg_class:probe")?;
    assert_eq!(seen.len(), 1);
    let seen = seen[0].to_string();
    assert!(
        seen.contains("snoop"),
        "the probe reported what it saw: {seen}"
    );
    assert!(
        !seen.contains(SECRET),
        "the secret leaked into the sandbox: {seen}"
    );
    assert!(
        !text(&out).contains(SECRET),
        "the secret appears in dphost's output"
    );
    // Nothing in the store holds it either.
    let db = std::fs::read(ws.dir.path().join("data/dphost.db"))?;
    let wal = std::fs::read(ws.dir.path().join("data/dphost.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the secret is in the store"
        );
    }
    Ok(())
}

#[test]
fn runaway_components_are_stopped_and_the_healthy_tenant_is_unaffected() -> Result<()> {
    let sim = Sim::start(&[
        "--rate",
        "300",
        "--history-hours",
        "2",
        "--max-lag-min",
        "0",
    ])?;
    let ws = Workspace::new()?;
    let mut config = tap_connector("healthy", "acme", &sim, "initial_lookback_hours = 2");
    config.push_str(&probe(
        "spinner",
        "mallory",
        &sim.url,
        "probe = \"spin\"\nlimits = { cpu_seconds = 1 }",
    ));
    config.push_str(&probe(
        "hog",
        "mallory",
        &sim.url,
        "probe = \"hog\"\nlimits = { memory_mib = 32 }",
    ));
    ws.write_config(&config)?;
    let out = ws.dphost(&["once"])?;
    let all = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed connector makes `once` fail: {all}"
    );
    assert!(
        all.contains("spinner (tenant mallory): FAILED (cpu-deadline)"),
        "{all}"
    );
    assert!(all.contains("CPU budget of 1 s"), "{all}");
    assert!(
        all.contains("hog (tenant mallory): FAILED (memory-cap)"),
        "{all}"
    );
    assert!(all.contains("memory cap of 32 MiB"), "{all}");
    assert!(all.contains("healthy (tenant acme): ok"), "{all}");
    let landed = landed_events(&ws)?;
    assert!(!landed.is_empty());
    assert!(
        landed.len() >= sim.truth()?.len() - 5,
        "the healthy tenant collected its window"
    );

    // `dphost status` tells the operator which tenant is failing and why.
    let out = ws.dphost(&["status", "--format", "json"])?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let row = |name: &str| {
        status["connectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["connector"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(row("spinner")["state"], "failing");
    assert!(row("spinner")["last_error"]
        .as_str()
        .unwrap()
        .contains("CPU budget"));
    assert_eq!(row("hog")["last_outcome"], "memory-cap");
    assert_eq!(row("healthy")["state"], "ok");
    assert_eq!(
        row("healthy")["records"].as_u64().unwrap() as usize,
        ws.search("syslog", "tenant_name:acme")?.len()
    );
    assert!(row("healthy")["checkpoint"].is_string(), "{status}");

    // The next run of the same sandbox works.
    let mut config = std::fs::read_to_string(ws.config_path())?;
    config = config
        .replace("probe = \"spin\"", "probe = \"ok\"")
        .replace("probe = \"hog\"", "probe = \"ok\"");
    std::fs::write(ws.config_path(), config)?;
    for name in ["spinner", "hog"] {
        let out = ws.dphost(&["once", "--connector", name])?;
        assert!(out.status.success(), "{}", text(&out));
    }
    Ok(())
}

#[test]
fn a_commit_in_flight_is_one_at_a_time_and_stored_even_if_the_run_ends_first() -> Result<()> {
    let sim = Sim::start(&["--rate", "0"])?;
    let ws = Workspace::new()?;
    ws.write_config(&probe("pipe", "mallory", &sim.url, "probe = \"pipelined\""))?;
    let out = ws.dphost(&["once"])?;
    assert!(out.status.success(), "{}", text(&out));
    let seen = ws.search("syslog", "msg_class:probe")?;
    let answers = seen
        .iter()
        .find(|r| r.get("first_wait").is_some())
        .unwrap_or_else(|| panic!("no answers among {seen:?}"));
    assert_eq!(answers["a"], "begun");
    assert!(
        answers["b"]
            .as_str()
            .unwrap()
            .starts_with("refused: a batch is already in flight"),
        "{answers}"
    );
    assert_eq!(answers["first_wait"], "written 1");
    assert_eq!(answers["second_wait"], "none");
    // The refused batch is not there; the one the run ended with is.
    assert_eq!(
        ws.record_ids("pipe", "syslog")?,
        vec!["pipe-a", "pipe-c", "pipelined"]
    );
    Ok(())
}
