//! Storage faults: the data dir fills up during a commit, or is read-only.
//! The run fails cleanly with a message that says so, nothing is
//! half-written (every commit is one SQLite transaction), the checkpoint
//! does not move, and collection resumes, complete, once space returns.
//!
//! The data dir is a small tmpfs mounted for the test (CI runs as root). A
//! machine where mounting is not allowed cannot run this test: it says so
//! and stops there.

use anyhow::{bail, Result};
use e2e::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const T0: OffsetDateTime = datetime!(2026-11-20 10:00:00 UTC);

/// A tmpfs mounted on a folder, unmounted on drop (also when a test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs> {
        std::fs::create_dir_all(at)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }

    fn remount(&self, mode: &str) -> Result<()> {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .output()?;
        if !out.status.success() {
            bail!(
                "remount {mode}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `path` up to `leave` bytes.
fn fill(path: &Path, leave: u64) -> Result<()> {
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0u8; 64 << 10];
    loop {
        if let Err(e) = f.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(28), "ENOSPC expected: {e}");
            break;
        }
    }
    drop(f);
    let len = std::fs::metadata(path)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(len.saturating_sub(leave))?;
    Ok(())
}

fn checkpoint(ws: &Workspace) -> Result<Option<String>> {
    ws.state("tap", "checkpoint")
}

#[test]
fn a_full_or_read_only_data_dir_fails_the_run_cleanly_and_collection_resumes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut clock = SimClock::new(dir.path(), T0)?;
    let sim = Sim::start(&[
        "--clock-file",
        clock.path().to_str().unwrap(),
        "--seed",
        "12",
        "--rate",
        "1500",
        "--history-hours",
        "1",
        "--max-lag-min",
        "0",
    ])?;
    let ws = Workspace::new()?;
    ws.write_config_with_host(
        &format!("clock_file = {:?}", clock.path().display().to_string()),
        &tap_connector(
            "tap",
            "acme",
            &sim,
            "initial_lookback_hours = 1\ncontent_types = [\"events\"]",
        ),
    )?;
    let data = ws.dir.path().join("data");
    let tmpfs = match Tmpfs::mount(&data, "48m") {
        Ok(m) => m,
        // CI runs as root: there the test must really run. A developer
        // without root is told it did not.
        Err(e) if !running_as_root() => {
            eprintln!(
                "storage: NOT RUN: cannot mount a tmpfs for the data dir ({e}); run as root with CAP_SYS_ADMIN"
            );
            return Ok(());
        }
        Err(e) => return Err(e.context("mounting a tmpfs for the data dir as root")),
    };
    let truth_now = |clock: &SimClock| {
        sim.truth_between(None, Some(&rfc3339(clock.now() - Duration::seconds(60))))
    };

    // A first run fills the store with an hour of events.
    let run = ws.once()?;
    assert!(run.ok, "{}", run.text);
    let first = checkpoint(&ws)?.expect("a checkpoint");
    assert_same_events(&landed_events(&ws)?, &truth_now(&clock)?, "first run");

    // An hour later the disk is full: the run's commits fail.
    clock.advance(Duration::hours(1))?;
    let filler = data.join("filler");
    fill(&filler, 256 << 10)?;
    let run = ws.once()?;
    assert!(!run.ok, "{}", run.text);
    assert!(
        run.text.contains("database or disk is full"),
        "{}",
        run.text
    );
    assert!(
        run.text.contains("the host could not store the batch"),
        "{}",
        run.text
    );
    assert_eq!(checkpoint(&ws)?.as_deref(), Some(first.as_str()));
    ws.assert_store_intact()?;
    let truth = truth_now(&clock)?;
    let landed = landed_events(&ws)?;
    let truth_set = multiset(truth.iter().map(|(t, e)| (t.as_str(), e)));
    let landed_set = multiset(landed.iter().map(|(t, e)| (t.as_str(), e)));
    assert!(
        landed_set.iter().all(|(k, n)| truth_set.get(k) == Some(n)),
        "only whole, true events were stored"
    );
    let while_full = landed.len();
    let full_message = run
        .text
        .lines()
        .find(|l| l.contains("FAILED"))
        .unwrap_or_default()
        .to_string();

    // Space returns: the next run collects everything.
    std::fs::remove_file(&filler)?;
    let run = ws.once()?;
    assert!(run.ok, "{}", run.text);
    assert_same_events(&landed_events(&ws)?, &truth, "after space returned");
    let second = checkpoint(&ws)?.expect("a checkpoint");
    assert_ne!(second, first);

    // A read-only data dir: the host refuses to start collecting and says
    // why; nothing changes.
    clock.advance(Duration::minutes(30))?;
    tmpfs.remount("ro")?;
    let run = ws.once()?;
    assert!(!run.ok, "{}", run.text);
    assert!(run.text.contains("cannot open the store"), "{}", run.text);
    assert!(run.text.contains("readonly database"), "{}", run.text);
    tmpfs.remount("rw")?;
    assert_eq!(checkpoint(&ws)?.as_deref(), Some(second.as_str()));
    let run = ws.once()?;
    assert!(run.ok, "{}", run.text);
    ws.assert_store_intact()?;
    let truth = truth_now(&clock)?;
    assert_same_events(&landed_events(&ws)?, &truth, "after the read-only spell");
    eprintln!("storage: the disk-full run said: {full_message}");
    eprintln!(
        "storage: disk full ({while_full} of {} events stored, checkpoint kept), space back: complete; read-only: refused, then complete ({} events)",
        truth_set.len(),
        truth.len()
    );
    Ok(())
}

/// Whether this process runs as root (uid 0), read from /proc.
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
