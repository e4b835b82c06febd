//! The `syslog` output: RFC 5424 messages over TCP with octet-counting
//! framing (RFC 6587 3.4.1), optionally over TLS (RFC 5425) verified against
//! `ca_file`.
//!
//! Each record is one message:
//! `<PRI>1 TIMESTAMP HOSTNAME dphost PROCID MSGID [dphost@32473 tenant=.. connector=.. index=.. id=.. change=..] JSON`
//! - PRI: facility (default local0) * 8 + severity: Syslog records are
//!   informational (6); alerts map their `severity` (1-100): >= 90 critical
//!   (2), >= 70 error (3), >= 40 warning (4), else notice (5);
//! - TIMESTAMP: the record's `timestamp` (event time, epoch ms), UTC;
//! - MSGID: the record's `msg_class` (e.g. `proofpoint_tap_event`);
//! - the structured data names the record (SD-ID under 32473, the private
//!   enterprise number reserved for documentation, RFC 5612);
//! - MSG: the stored JSON record, unchanged, on one line.
//!
//! "Accepted" means: written, flushed, and on Linux acknowledged by the
//! receiver's TCP stack (the socket's send queue is empty while the
//! connection is still established). Plain TCP syslog has no
//! application-level acknowledgement, so a receiver that dies after its
//! kernel acknowledged a message but before it processed it can lose that
//! message; everything else (refused or reset connections, a receiver
//! restarted between batches, a silent network) is detected and re-sent.

use crate::config::SyslogOutput;
use crate::store::{ForwardRecord, Index};
use anyhow::{bail, Context, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the receiver may take to read and acknowledge a batch.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Conn {
    stream: Box<dyn Stream>,
    /// The TCP socket under `stream` (TLS or not), for the delivery check.
    #[cfg(target_os = "linux")]
    fd: std::os::fd::RawFd,
}

pub struct SyslogSender {
    cfg: SyslogOutput,
    conn: Option<Conn>,
    tls: Option<Arc<rustls::ClientConfig>>,
    hostname: String,
    procid: String,
}

impl SyslogSender {
    pub fn new(cfg: SyslogOutput) -> SyslogSender {
        SyslogSender {
            cfg,
            conn: None,
            tls: None,
            hostname: local_hostname(),
            procid: std::process::id().to_string(),
        }
    }

    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// Sends the batch; Ok once the receiver accepted all of it.
    pub async fn deliver(&mut self, batch: &[ForwardRecord]) -> Result<()> {
        let mut frames = Vec::with_capacity(batch.len() * 1024);
        for r in batch {
            let msg = format_message(r, self.cfg.facility, &self.hostname, &self.procid);
            frame(&msg, &mut frames);
        }
        if let Some(conn) = &mut self.conn {
            // A receiver restarted since the last batch closed this
            // connection: writing to it would vanish into a reset.
            if let Some(why) = closed_by_peer(&mut conn.stream).await {
                tracing::debug!("syslog connection to {} closed: {why}", self.cfg.address);
                self.conn = None;
            }
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let sent = async {
            conn.stream.write_all(&frames).await?;
            conn.stream.flush().await
        };
        tokio::time::timeout(ACK_TIMEOUT, sent)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{} did not take {} bytes within {ACK_TIMEOUT:?}: is the SIEM overloaded?",
                    self.cfg.address,
                    frames.len()
                )
            })?
            .with_context(|| format!("sending to {}", self.cfg.address))?;
        #[cfg(target_os = "linux")]
        wait_acknowledged(conn.fd, &self.cfg.address).await?;
        Ok(())
    }

    async fn connect(&mut self) -> Result<Conn> {
        let address = &self.cfg.address;
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.cfg.host.as_str(), self.cfg.port)),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!("connecting to {address} timed out after {CONNECT_TIMEOUT:?}")
        })?
        .with_context(|| {
            format!("cannot connect to the syslog receiver {address}: is it running and reachable?")
        })?;
        tcp.set_nodelay(true)?;
        #[cfg(target_os = "linux")]
        let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
        let stream: Box<dyn Stream> = if self.cfg.tls {
            let config = match &self.tls {
                Some(c) => c.clone(),
                None => {
                    let c = Arc::new(tls_config(&self.cfg)?);
                    self.tls = Some(c.clone());
                    c
                }
            };
            let name = rustls::pki_types::ServerName::try_from(self.cfg.host.clone())
                .with_context(|| format!("`{}` is not a valid TLS server name", self.cfg.host))?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| anyhow::anyhow!("TLS handshake with {address} timed out"))?
                .with_context(|| {
                    format!(
                        "TLS handshake with {address} failed: check that its certificate is issued for `{}` by a CA in {}",
                        self.cfg.host,
                        self.cfg
                            .ca_file
                            .as_ref()
                            .map(|f| format!("ca_file {}", f.display()))
                            .unwrap_or_else(|| "the public web PKI (or set ca_file)".into())
                    )
                })?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        tracing::info!(
            "connected to the syslog receiver {address}{}",
            if self.cfg.tls { " (TLS)" } else { "" }
        );
        Ok(Conn {
            stream,
            #[cfg(target_os = "linux")]
            fd,
        })
    }
}

fn tls_config(cfg: &SyslogOutput) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(file) => {
            use rustls::pki_types::pem::PemObject;
            let pem = std::fs::read(file)
                .with_context(|| format!("cannot read ca_file {}", file.display()))?;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.with_context(|| format!("ca_file {} is not valid PEM", file.display()))?;
                roots.add(cert).with_context(|| {
                    format!(
                        "ca_file {} holds an unusable CA certificate",
                        file.display()
                    )
                })?;
            }
            if roots.is_empty() {
                bail!("ca_file {} holds no certificate", file.display());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Why the connection is no longer usable, if the receiver closed it. The
/// syslog receiver never sends data, so anything readable is an end.
async fn closed_by_peer(stream: &mut Box<dyn Stream>) -> Option<String> {
    let mut buf = [0u8; 1024];
    loop {
        // A zero timeout polls the read once: pending means open and quiet.
        match tokio::time::timeout(Duration::ZERO, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) => return Some("closed by the receiver".into()),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Some(e.to_string()),
        }
    }
}

/// Waits until the receiver's TCP stack acknowledged every byte written,
/// on a connection that is still open.
#[cfg(target_os = "linux")]
async fn wait_acknowledged(fd: std::os::fd::RawFd, address: &str) -> Result<()> {
    const ESTABLISHED: u8 = 1;
    const CLOSE_WAIT: u8 = 8;
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let (unacked, state) = socket_queue(fd).context("reading the socket's send queue")?;
        if state != ESTABLISHED && state != CLOSE_WAIT {
            bail!("{address} reset the connection before acknowledging the batch");
        }
        if unacked == 0 {
            return Ok(());
        }
        if started.elapsed() > ACK_TIMEOUT {
            bail!("{address} did not acknowledge {unacked} bytes within {ACK_TIMEOUT:?}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// (bytes not yet acknowledged by the peer, TCP state). SIOCOUTQ is
/// `write_seq - snd_una` for TCP: unsent plus sent-but-unacknowledged.
#[cfg(target_os = "linux")]
fn socket_queue(fd: std::os::fd::RawFd) -> std::io::Result<(i32, u8)> {
    let mut unacked: libc::c_int = 0;
    // SAFETY: `fd` is the open socket of a live `Conn`; TIOCOUTQ (SIOCOUTQ)
    // writes one int.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut unacked as *mut libc::c_int) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The first byte of `struct tcp_info` is the state; the kernel copies
    // only as much as the buffer holds.
    let mut info = [0u8; 8];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: the buffer and its length are valid for the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((unacked, info[0]))
}

/// The machine's host name for the HOSTNAME field ("-" if unknown).
fn local_hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name = name.trim();
    if name.is_empty() || name.len() > 255 || !name.bytes().all(|b| (33..=126).contains(&b)) {
        "-".into()
    } else {
        name.into()
    }
}

/// Severity (RFC 5424 6.2.1) of a record.
pub fn severity(r: &ForwardRecord, body: &serde_json::Value) -> u8 {
    match r.index {
        Index::Alerts => match body.get("severity").and_then(|s| s.as_f64()) {
            Some(s) if s >= 90.0 => 2,
            Some(s) if s >= 70.0 => 3,
            Some(s) if s >= 40.0 => 4,
            Some(_) => 5,
            None => 4,
        },
        _ => 6,
    }
}

/// One RFC 5424 message (without the octet count).
pub fn format_message(r: &ForwardRecord, facility: u8, hostname: &str, procid: &str) -> String {
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    let pri = facility as u32 * 8 + severity(r, &body) as u32;
    let ms = body
        .get("timestamp")
        .and_then(|t| t.as_i64())
        .unwrap_or(r.written_ms);
    let timestamp = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| "-".into());
    let msgid = body
        .get("msg_class")
        .and_then(|m| m.as_str())
        .filter(|m| !m.is_empty() && m.len() <= 32 && m.bytes().all(|b| (33..=126).contains(&b)))
        .unwrap_or(r.index.as_str());
    format!(
        "<{pri}>1 {timestamp} {hostname} dphost {procid} {msgid} [dphost@32473 tenant=\"{}\" connector=\"{}\" index=\"{}\" id=\"{}\" change=\"{}\"] {}",
        sd_escape(&r.tenant),
        sd_escape(&r.connector),
        r.index.as_str(),
        sd_escape(&r.id),
        r.change_seq,
        super::one_line(&r.body)
    )
}

/// Appends `msg` with octet-counting framing (RFC 6587 3.4.1):
/// `MSG-LEN SP SYSLOG-MSG`, where MSG-LEN counts bytes, not characters.
pub fn frame(msg: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg.as_bytes());
}

/// PARAM-VALUE escaping (RFC 5424 6.3.3): `"`, `\` and `]`.
fn sd_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(index: Index, body: &str) -> ForwardRecord {
        ForwardRecord {
            change_seq: 42,
            index,
            connector: "acme-tap".into(),
            tenant: "acme".into(),
            id: "clk\"1]".into(),
            body: body.into(),
            written_ms: 0,
        }
    }

    #[test]
    fn messages_follow_rfc5424() {
        let m = format_message(
            &rec(
                Index::Syslog,
                r#"{"msg_class":"proofpoint_tap_event","timestamp":1764324000123}"#,
            ),
            16,
            "host1",
            "77",
        );
        assert_eq!(
            m,
            r#"<134>1 2025-11-28T10:00:00.123Z host1 dphost 77 proofpoint_tap_event [dphost@32473 tenant="acme" connector="acme-tap" index="syslog" id="clk\"1\]" change="42"] {"msg_class":"proofpoint_tap_event","timestamp":1764324000123}"#
        );
    }

    #[test]
    fn frames_count_bytes() {
        let mut out = Vec::new();
        frame("<134>1 - - dphost 1 - - {}", &mut out);
        assert_eq!(out, b"26 <134>1 - - dphost 1 - - {}");
        // Frames follow each other with nothing between them.
        frame("x", &mut out);
        assert_eq!(out, b"26 <134>1 - - dphost 1 - - {}1 x");

        // `ü` and `ß` are 2 bytes in UTF-8, `€` is 3: 10 characters, 14 bytes.
        let mut out = Vec::new();
        frame("Grüße, 5 €", &mut out);
        assert_eq!(out, b"14 Gr\xc3\xbc\xc3\x9fe, 5 \xe2\x82\xac");
        let mut out = Vec::new();
        frame("", &mut out);
        assert_eq!(out, b"0 ");

        // A whole message with a non-ASCII body.
        let body = r#"{"msg_class":"proofpoint_tap_event","timestamp":0,"subject":"Grüße"}"#;
        let msg = format_message(&rec(Index::Syslog, body), 16, "h", "1");
        let mut out = Vec::new();
        frame(&msg, &mut out);
        let (count, rest) = out.split_at(out.iter().position(|b| *b == b' ').unwrap());
        assert_eq!(std::str::from_utf8(count).unwrap(), msg.len().to_string());
        assert_eq!(&rest[1..], msg.as_bytes());
        assert_ne!(msg.len(), msg.chars().count());
    }

    #[test]
    fn alerts_rank_above_events_by_their_severity() {
        let sev =
            |index, body: &str| severity(&rec(index, body), &serde_json::from_str(body).unwrap());
        assert_eq!(sev(Index::Syslog, r#"{"severity":99}"#), 6);
        assert_eq!(sev(Index::Alerts, r#"{"severity":95}"#), 2);
        assert_eq!(sev(Index::Alerts, r#"{"severity":75}"#), 3);
        assert_eq!(sev(Index::Alerts, r#"{"severity":50}"#), 4);
        assert_eq!(sev(Index::Alerts, r#"{"severity":10}"#), 5);
        // No usable msg_class: the index names the message.
        let m = format_message(&rec(Index::Alerts, r#"{"severity":95}"#), 13, "-", "1");
        assert!(
            m.starts_with("<106>1 1970-01-01T00:00:00.000Z - dphost 1 alerts [dphost@32473 "),
            "{m}"
        );
    }
}
