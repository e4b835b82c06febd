//! Drop-in updates: a new version of a component dropped into the
//! components folder is used from the next run on, without restarting
//! `dphost run`; a file that is not a component, or lacks the world's
//! exports, is rejected with a clear message while the previous version keeps
//! running. Compiled code is cached on disk, so a restart does not recompile.

use anyhow::{bail, Result};
use e2e::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Replace `dir/name` atomically, as an operator should (write, then rename).
fn drop_in(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// Polls `cond` every 100 ms for up to a minute.
fn wait_for(what: &str, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if cond()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out waiting for {what}")
}

/// Successful runs logged after the first line containing `marker` whose
/// summary is the TAP connector's (version 2; the probe's summary is `ok`).
fn tap_runs_after(log: &str, marker: &str) -> usize {
    log.lines()
        .skip_while(|l| !l.contains(marker))
        .filter(|l| l.contains("collect ok in") && l.contains("\"windows\":"))
        .count()
}

fn ok_runs(ws: &Workspace) -> Result<usize> {
    Ok(ws
        .runs("c")?
        .iter()
        .filter(|(outcome, _, _)| outcome == "ok")
        .count())
}

#[test]
fn a_new_version_is_used_at_the_next_run_and_bad_files_are_rejected() -> Result<()> {
    let sim = Sim::start(&[
        "--rate",
        "300",
        "--history-hours",
        "1",
        "--max-lag-min",
        "0",
    ])?;
    let ws = Workspace::new()?;
    let components = ws.dir.path().join("components");
    // Version 1 of component `conn` is the probe (it ignores the TAP keys
    // and commits one `probe` record per run).
    drop_in(&components, "conn.wasm", &std::fs::read(probe_component())?)?;
    ws.write_config(
        &tap_connector("c", "acme", &sim, "initial_lookback_hours = 1")
            .replace("component = \"proofpoint_tap\"", "component = \"conn\""),
    )?;

    // The compiled-code cache: the first start compiles and caches, a
    // restart loads from the cache without compiling.
    let once = |log: &str| {
        Command::new(dphost_bin())
            .args(["once", "--config"])
            .arg(ws.config_path())
            .env("DPHOST_LOG", log)
            .output()
    };
    let first = once("info,dphost=debug")?;
    assert!(first.status.success(), "{}", text(&first));
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(
        stderr.contains("compiled ") && stderr.contains("(cached as"),
        "{stderr}"
    );
    let cache_dir = ws.dir.path().join("data/cache");
    let cached: Vec<_> = std::fs::read_dir(&cache_dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    assert_eq!(cached.len(), 1, "{cached:?}");
    let mtime = std::fs::metadata(&cached[0])?.modified()?;
    let second = once("info,dphost=debug")?;
    assert!(second.status.success(), "{}", text(&second));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("loaded from the compiled cache"),
        "{stderr}"
    );
    assert!(!stderr.contains("compiled /"), "recompiled: {stderr}");
    assert_eq!(std::fs::metadata(&cached[0])?.modified()?, mtime);

    // `dphost run`, a run every second.
    let log_path = ws.dir.path().join("run.log");
    let mut child = Command::new(dphost_bin())
        .args(["run", "--config"])
        .arg(ws.config_path())
        .env("DPHOST_INTERVAL_SECS", "1")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()?;
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let result = (|| -> Result<()> {
        let runs_before = ok_runs(&ws)?;
        wait_for("a run of version 1", || Ok(ok_runs(&ws)? > runs_before))?;
        assert!(landed_events(&ws)?.is_empty());

        // Version 2: the TAP connector. The next run collects events.
        drop_in(&components, "conn.wasm", &std::fs::read(tap_component())?)?;
        wait_for("TAP events from version 2", || {
            Ok(!landed_events(&ws)?.is_empty())
        })?;
        assert!(log().contains("is in use from this run on"), "{}", log());

        // Not a component: rejected, version 2 keeps running.
        drop_in(&components, "conn.wasm", b"this is not WebAssembly")?;
        wait_for("the rejection", || {
            Ok(log().contains("is not a valid WebAssembly component"))
        })?;
        wait_for("two runs of version 2 after the rejection", || {
            Ok(tap_runs_after(&log(), "is not a valid WebAssembly component") >= 2)
        })?;

        // A valid component without the world's exports: rejected too.
        drop_in(
            &components,
            "conn.wasm",
            b"\0asm\x0d\x00\x01\x00", // the empty component
        )?;
        wait_for("the second rejection", || {
            Ok(log().contains("does not export the dphost:connector/connector interface"))
        })?;
        wait_for("two runs of version 2 after the second rejection", || {
            Ok(tap_runs_after(
                &log(),
                "does not export the dphost:connector/connector interface",
            ) >= 2)
        })?;
        let log = log();
        assert_eq!(
            log.matches("keeps running: fix or replace the file")
                .count(),
            2,
            "each bad file is reported once: {log}"
        );
        let failed: Vec<_> = ws
            .runs("c")?
            .into_iter()
            .filter(|(o, _, _)| o != "ok")
            .collect();
        assert!(failed.is_empty(), "no run failed: {failed:?}");
        Ok(())
    })();
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait()?;
    result?;
    assert!(status.success(), "{status:?}: {}", log());
    Ok(())
}
