//! Storage faults: the data dir fills up during a commit, or is read-only.
//! The run fails cleanly with a message that says so, nothing is
//! half-written (every commit is one SQLite transaction), the checkpoint
//! does not move, and collection resumes, complete, once space returns.
//!
//! The data dir is a small tmpfs mounted for the test (CI runs as root), or,
//! for a file system that turns read-only under a running collection, an
//! ext4 image on a loop device mounted `errors=remount-ro`, pushed into its
//! emergency read-only state through ext4's `trigger_fs_error` (what the
//! kernel does to a data dir whose disk fails). A machine where mounting is
//! not allowed cannot run these tests: they say so and stop there.

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

/// An ext4 image on a loop device mounted on a folder (`errors=remount-ro`),
/// unmounted on drop.
struct Ext4 {
    image: PathBuf,
    at: PathBuf,
}

fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Ext4 {
    fn mount(image: &Path, at: &Path, size_mib: u64) -> Result<Ext4> {
        std::fs::create_dir_all(at)?;
        std::fs::File::create(image)?.set_len(size_mib << 20)?;
        run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image))?;
        let fs = Ext4 {
            image: image.to_path_buf(),
            at: at.to_path_buf(),
        };
        fs.mount_again()?;
        Ok(fs)
    }

    fn mount_again(&self) -> Result<()> {
        run_ok(
            Command::new("mount")
                .args(["-o", "loop,errors=remount-ro"])
                .arg(&self.image)
                .arg(&self.at),
        )?;
        Ok(())
    }

    /// What the kernel does on a disk error: the file system turns
    /// read-only at once, with the store's files still open for writing.
    fn fail(&self) -> Result<()> {
        let source = run_ok(
            Command::new("findmnt")
                .args(["-no", "SOURCE"])
                .arg(&self.at),
        )?;
        let dev = source.rsplit('/').next().unwrap_or_default();
        std::fs::write(
            format!("/sys/fs/ext4/{dev}/trigger_fs_error"),
            "dphost storage test",
        )?;
        let options = run_ok(
            Command::new("findmnt")
                .args(["-no", "OPTIONS"])
                .arg(&self.at),
        )?;
        // Newer kernels keep `rw` in the options and add `emergency_ro`.
        anyhow::ensure!(
            options.starts_with("ro") || options.contains("emergency_ro"),
            "still mounted {options}"
        );
        Ok(())
    }

    /// What an operator does next: unmount, check, mount again.
    fn repair(&self) -> Result<()> {
        run_ok(Command::new("umount").arg(&self.at))?;
        // 1: errors corrected, which is what is expected after the error.
        let status = Command::new("e2fsck")
            .args(["-f", "-y"])
            .arg(&self.image)
            .output()?
            .status;
        anyhow::ensure!(matches!(status.code(), Some(0 | 1)), "e2fsck: {status}");
        self.mount_again()
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

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

#[test]
fn a_data_dir_that_turns_read_only_during_a_run_loses_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = SimClock::new(dir.path(), T0)?;
    // Six hours of a busy tenant: a run of many windows and commits.
    let sim = Sim::start(&[
        "--clock-file",
        clock.path().to_str().unwrap(),
        "--seed",
        "13",
        "--rate",
        "5000",
        "--history-hours",
        "6",
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
            "initial_lookback_hours = 6\ncontent_types = [\"events\"]\nmax_window_minutes = 10",
        ),
    )?;
    let data = ws.dir.path().join("data");
    let fs = match Ext4::mount(&dir.path().join("data.ext4"), &data, 512) {
        Ok(fs) => fs,
        Err(e) if !running_as_root() => {
            eprintln!(
                "storage: NOT RUN: cannot mount an ext4 image for the data dir ({e}); run as root"
            );
            return Ok(());
        }
        Err(e) => return Err(e.context("mounting an ext4 image on a loop device as root")),
    };
    let out_path = ws.dir.path().join("once.out");
    let mut child = Command::new(dphost_bin())
        .args(["once", "--config"])
        .arg(ws.config_path())
        .env_remove("RUST_LOG")
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Some windows in, the disk fails under the running collection.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let stored_before = loop {
        let n: i64 = ws
            .db()
            .and_then(|db| Ok(db.query_row("SELECT count(*) FROM records", [], |r| r.get(0))?))
            .unwrap_or(0);
        if n >= 2000 {
            break n;
        }
        assert!(
            child.try_wait()?.is_none(),
            "the run ended before the disk failed"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the run stored {n} records in 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    fs.fail()?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        std::fs::read_to_string(&out_path)?,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    let failed_line = said
        .lines()
        .find(|l| l.starts_with("tap (tenant"))
        .unwrap_or_default()
        .to_string();
    assert!(failed_line.contains("FAILED"), "{said}");
    assert!(
        failed_line.contains("could not be written") && failed_line.contains("read-only"),
        "the operator is told the data dir stopped taking writes: {failed_line}"
    );

    // The operator repairs the file system: the store is whole, every
    // commit made before the failure is there, and what the checkpoint
    // covers is all there.
    fs.repair()?;
    // The first dphost to open the store recovers its write-ahead log (the
    // test's own read-only connection cannot).
    let status = ws.dphost(&["status"])?;
    assert!(status.status.success(), "{}", text(&status));
    ws.assert_store_intact()?;
    let checkpoint = checkpoint(&ws)?;
    let after_repair = landed_events(&ws)?.len();
    // Every commit was on disk before the component was told it was stored.
    let records_after: i64 = ws
        .db()?
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))?;
    assert!(
        records_after >= stored_before,
        "{records_after} records after the repair, {stored_before} were committed before the failure"
    );
    assert!(checkpoint.is_some(), "the committed checkpoint survived");
    if let Some(cp) = &checkpoint {
        let secs: i64 = cp.parse()?;
        let end = OffsetDateTime::from_unix_timestamp(secs - 1)?;
        let covered = sim.truth_between(None, Some(&rfc3339(end)))?;
        let landed = landed_events(&ws)?;
        let landed = multiset(landed.iter().map(|(t, e)| (t.as_str(), e)));
        for (k, n) in multiset(covered.iter().map(|(t, e)| (t.as_str(), e))) {
            assert!(
                landed.get(&k).is_some_and(|m| *m >= n),
                "an event before the checkpoint is missing"
            );
        }
    }
    // The next run completes the collection.
    let run = ws.once()?;
    assert!(run.ok, "{}", run.text);
    ws.assert_store_intact()?;
    let truth = sim.truth_between(None, Some(&rfc3339(clock.now() - Duration::seconds(60))))?;
    assert_same_events(&landed_events(&ws)?, &truth, "after the repair");
    eprintln!(
        "storage: read-only under a run after {stored_before} records: {failed_line}; after the repair {after_repair} events and checkpoint {checkpoint:?} kept, then complete ({} events)",
        truth.len()
    );
    Ok(())
}
