//! Shared helpers for the integration tests: start the built `tap-sim`
//! binary and talk HTTP to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};

use reqwest::blocking::{Client, Response};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub const PRINCIPAL: &str = "sim-principal";
pub const SECRET: &str = "sim-secret";

pub const TOO_SHORT: &str =
    "The requested interval is too short. Requests must be for at least 30.00s of data";
pub const TOO_LONG: &str =
    "The requested interval is too long. Requests must be for at most 1.00h of data";
pub const TOO_FAR: &str = "The requested start time is too far into the past. Requests for information up to 7.00d are accepted";
pub const STILL_CURRENT: &str = "The requested interval is still current.";

/// A running simulator; killed on drop.
pub struct Sim {
    pub child: Child,
    pub base: String,
    pub client: Client,
    // Kept open so the simulator never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Sim {
    pub fn start(args: &[&str]) -> Sim {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tap-sim"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tap-sim");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first_line = String::new();
        stdout.read_line(&mut first_line).unwrap();
        let base = first_line
            .trim_end()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first_line:?}"))
            .to_string();
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        assert!(!base.ends_with(":0"), "{base}");
        Sim {
            child,
            base,
            client: Client::new(),
            _stdout: stdout,
        }
    }

    pub fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.base))
            .basic_auth(PRINCIPAL, Some(SECRET))
            .send()
            .unwrap()
    }

    pub fn get_without_auth(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .unwrap()
    }

    pub fn json(&self, path: &str) -> Value {
        let response = self.get(path);
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{path}"
        );
        response.json().unwrap()
    }

    /// Status and body of a request expected to fail.
    pub fn error(&self, path: &str) -> (u16, String) {
        let response = self.get(path);
        (response.status().as_u16(), response.text().unwrap())
    }

    pub fn truth(&self, query: &str) -> Vec<Value> {
        let text = self
            .get_without_auth(&format!("/_sim/truth{query}"))
            .text()
            .unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    pub fn stats(&self) -> Value {
        self.get_without_auth("/_sim/stats").json().unwrap()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn parse_time(value: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(value.as_str().unwrap(), &Rfc3339).unwrap()
}

pub fn format_z(at: OffsetDateTime) -> String {
    let s = at.format(&Rfc3339).unwrap();
    s.replace("+00:00", "Z")
}

/// Filed time as a connector would compute it from the event alone.
pub fn filed_time(event: &Value) -> OffsetDateTime {
    let mut times = Vec::new();
    for key in ["messageTime", "clickTime", "threatTime"] {
        if event[key].is_string() {
            times.push(parse_time(&event[key]));
        }
    }
    if let Some(threats) = event["threatsInfoMap"].as_array() {
        times.extend(threats.iter().map(|t| parse_time(&t["threatTime"])));
    }
    times.into_iter().max().unwrap()
}

/// Order-independent identity of an event.
pub fn canonical(event: &Value) -> String {
    serde_json::to_string(event).unwrap()
}

pub const ARRAYS: [&str; 4] = [
    "messagesDelivered",
    "messagesBlocked",
    "clicksPermitted",
    "clicksBlocked",
];

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tap-sim-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TempDir {
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

/// Writes a `--clock-file` the way tests should: atomically (temporary
/// file, then rename), so the simulator never reads half a time.
pub fn set_clock(path: &std::path::Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, format!("{text}\n")).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// Runs `tap-sim` expecting it to fail before listening.
pub fn run_expecting_failure(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tap-sim"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    assert!(!output.status.success(), "{args:?} should fail");
    assert!(
        output.stdout.is_empty(),
        "{args:?}: must fail before listening"
    );
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// What a raw HTTP/1.1 GET received: every byte until the connection
/// ended, and how it ended (`None`: orderly close).
pub struct RawReply {
    pub bytes: Vec<u8>,
    pub error: Option<std::io::Error>,
}

/// Header names (lower case) and values.
pub type Headers = Vec<(String, String)>;

impl RawReply {
    /// Status code, headers and body, if a head arrived.
    pub fn parse(&self) -> Option<(u16, Headers, &[u8])> {
        let end = self.bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&self.bytes[..end]).ok()?;
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Some((status, headers, &self.bytes[end + 4..]))
    }
}

impl Sim {
    /// An authenticated GET over a bare TCP connection, to see exactly what
    /// the simulator sends (and how the connection ends).
    pub fn raw_get(&self, path: &str) -> RawReply {
        use base64::Engine;
        use std::io::{Read, Write};
        let address = self.base.strip_prefix("http://").unwrap();
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{PRINCIPAL}:{SECRET}"));
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Basic {credentials}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut bytes = Vec::new();
        let mut buffer = [0u8; 8192];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => return RawReply { bytes, error: None },
                Ok(n) => bytes.extend_from_slice(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return RawReply {
                        bytes,
                        error: Some(e),
                    }
                }
            }
        }
    }
}
