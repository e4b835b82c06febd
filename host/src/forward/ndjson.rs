//! The `ndjson` output: one JSON record per line, for file-tailing shippers
//! (Filebeat, Fluent Bit, Vector, a SIEM agent).
//!
//! Records are appended to `PATH/NAME.ndjson` and fsynced before the cursor
//! moves. When the file reaches `rotate_mib` or is `rotate_secs` old it is
//! fsynced and renamed, atomically, to `PATH/NAME-YYYYMMDDTHHMMSS.mmmZ.ndjson`
//! (the same inode: a shipper following the file by inode reads it to the
//! end), and the next record starts a new current file. A record is never
//! split across files. A line cut short by a crash is removed when the file
//! is opened again; its record is written again (its cursor had not moved).

use crate::config::NdjsonOutput;
use crate::store::ForwardRecord;
use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::SystemTime;

pub struct NdjsonWriter {
    name: String,
    cfg: NdjsonOutput,
    current: Option<Current>,
}

struct Current {
    file: File,
    size: u64,
    /// When the file got its first record (for `rotate_secs`).
    started: SystemTime,
}

impl NdjsonWriter {
    pub fn new(name: &str, cfg: NdjsonOutput) -> NdjsonWriter {
        NdjsonWriter {
            name: name.to_string(),
            cfg,
            current: None,
        }
    }

    /// The file being written.
    pub fn current_path(&self) -> PathBuf {
        self.cfg.dir.join(format!("{}.ndjson", self.name))
    }

    pub fn close(&mut self) {
        self.current = None;
    }

    /// Appends the batch and fsyncs it; Ok once it is durable.
    pub fn deliver(&mut self, batch: &[ForwardRecord]) -> Result<()> {
        self.rotate_if_due()?;
        let mut lines = String::with_capacity(batch.len() * 1024);
        for r in batch {
            lines.push_str(&super::one_line(&r.body));
            lines.push('\n');
        }
        let path = self.current_path();
        let current = self.open()?;
        current
            .file
            .write_all(lines.as_bytes())
            .and_then(|_| current.file.sync_data())
            .with_context(|| format!("cannot write {}: is the disk full?", path.display()))?;
        current.size += lines.len() as u64;
        // Rotate now rather than at the next batch, so a full file is
        // handed to the shipper without waiting for more records.
        self.rotate_if_due()
    }

    /// Renames the current file away if it is full or old enough.
    pub fn rotate_if_due(&mut self) -> Result<()> {
        if self.current.is_none() && self.current_path().exists() {
            // After a restart: pick up the file left behind.
            self.open()?;
        }
        let Some(current) = &self.current else {
            return Ok(());
        };
        let age = SystemTime::now()
            .duration_since(current.started)
            .unwrap_or_default();
        let due = current.size > 0
            && (current.size >= self.cfg.rotate_bytes || age.as_secs() >= self.cfg.rotate_secs);
        if !due {
            return Ok(());
        }
        let current = self.current.take().expect("checked above");
        current.file.sync_all()?;
        drop(current);
        let from = self.current_path();
        let to = self.rotated_path();
        std::fs::rename(&from, &to)
            .with_context(|| format!("cannot rotate {} to {}", from.display(), to.display()))?;
        sync_dir(&self.cfg.dir)?;
        tracing::debug!("rotated {} to {}", from.display(), to.display());
        Ok(())
    }

    fn rotated_path(&self) -> PathBuf {
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
            ))
            .unwrap_or_else(|_| "rotated".into());
        let mut n = 0;
        loop {
            let suffix = if n == 0 {
                String::new()
            } else {
                format!("-{n}")
            };
            let p = self
                .cfg
                .dir
                .join(format!("{}-{stamp}{suffix}.ndjson", self.name));
            if !p.exists() {
                return p;
            }
            n += 1;
        }
    }

    fn open(&mut self) -> Result<&mut Current> {
        if self.current.is_none() {
            std::fs::create_dir_all(&self.cfg.dir).with_context(|| {
                format!("cannot create the ndjson folder {}", self.cfg.dir.display())
            })?;
            let path = self.current_path();
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let size = drop_partial_line(&mut file)
                .with_context(|| format!("cannot repair the end of {}", path.display()))?;
            file.seek(SeekFrom::Start(size))?;
            let meta = file.metadata()?;
            let started = if size == 0 {
                SystemTime::now()
            } else {
                meta.created()
                    .or_else(|_| meta.modified())
                    .unwrap_or_else(|_| SystemTime::now())
            };
            sync_dir(&self.cfg.dir)?;
            self.current = Some(Current {
                file,
                size,
                started,
            });
        }
        Ok(self.current.as_mut().expect("opened above"))
    }
}

/// Truncates the file after its last newline; returns the new length.
fn drop_partial_line(file: &mut File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end != len {
        tracing::warn!(
            "removing {} byte(s) of a line cut short by a crash; its record is written again",
            len - end
        );
        file.set_len(end)?;
        file.sync_all()?;
    }
    Ok(end)
}

/// Makes a rename or a creation in `dir` durable.
fn sync_dir(dir: &std::path::Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync the folder {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Index;

    fn rec(seq: i64) -> ForwardRecord {
        ForwardRecord {
            change_seq: seq,
            index: Index::Syslog,
            connector: "c".into(),
            tenant: "t".into(),
            id: seq.to_string(),
            body: format!(r#"{{"n":{seq},"pad":"{}"}}"#, "x".repeat(100)),
            written_ms: 0,
        }
    }

    fn lines_in(dir: &std::path::Path) -> (usize, Vec<String>) {
        let mut files = 0;
        let mut lines = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            files += 1;
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            assert!(text.is_empty() || text.ends_with('\n'));
            lines.extend(text.lines().map(str::to_string));
        }
        lines.sort();
        (files, lines)
    }

    #[test]
    fn rotates_by_size_without_splitting_or_losing_records() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NdjsonOutput {
            dir: dir.path().join("out"),
            rotate_bytes: 1000,
            rotate_secs: 3600,
        };
        let mut w = NdjsonWriter::new("siem", cfg.clone());
        for batch in (1..=40).collect::<Vec<i64>>().chunks(3) {
            w.deliver(&batch.iter().map(|&s| rec(s)).collect::<Vec<_>>())
                .unwrap();
        }
        let (files, lines) = lines_in(&cfg.dir);
        assert!(files >= 4, "{files} files");
        let mut want: Vec<String> = (1..=40).map(|s| rec(s).body).collect();
        want.sort();
        assert_eq!(lines, want);
    }

    #[test]
    fn a_line_cut_short_is_removed_on_reopen_and_time_rotation_applies() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NdjsonOutput {
            dir: dir.path().to_path_buf(),
            rotate_bytes: 1 << 20,
            rotate_secs: 1,
        };
        let mut w = NdjsonWriter::new("siem", cfg.clone());
        w.deliver(&[rec(1)]).unwrap();
        drop(w);
        let path = cfg.dir.join("siem.ndjson");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"n":2,"pa"#).unwrap();
        let mut w = NdjsonWriter::new("siem", cfg.clone());
        w.deliver(&[rec(2)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n{}\n", rec(1).body, rec(2).body));
        std::thread::sleep(std::time::Duration::from_millis(1100));
        w.rotate_if_due().unwrap();
        assert!(!path.exists());
        let (files, lines) = lines_in(&cfg.dir);
        assert_eq!((files, lines.len()), (1, 2));
    }
}
