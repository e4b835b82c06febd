//! A throwaway PostgreSQL for the tests (tests/postgres/postgres.sh): one
//! server per test process, started on first use on a free loopback port,
//! stopped by the script's watcher when the process ends (passed or not);
//! one database per workspace.
//!
//! `DPHOST_TEST_STORE=postgres` puts every `Workspace` on it (see
//! `TestStore::from_env`).

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The password of the server's `dphost` user: distinctive, so tests can
/// check it never shows in logs, status or errors.
pub const PASSWORD: &str = "pg-Secret-7a1f0c";

/// The `host_name` of a workspace's dphost on PostgreSQL.
pub const TEST_HOST: &str = "e2e";

pub struct PgServer {
    pub port: u16,
    pub dir: PathBuf,
}

static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(1);

/// The test process's server, started on first use.
pub fn server() -> Result<&'static PgServer> {
    SERVER
        .get_or_init(|| start().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("the test PostgreSQL did not start: {e}"))
}

fn start() -> Result<PgServer> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("dphost-pg-{}-{port}", std::process::id()));
    let out = Command::new("sh")
        .arg(crate::root().join("tests/postgres/postgres.sh"))
        .arg("start")
        .arg(&dir)
        .arg(port.to_string())
        .arg(PASSWORD)
        .arg(std::process::id().to_string())
        .output()
        .context("running tests/postgres/postgres.sh")?;
    if !out.status.success() {
        bail!(
            "tests/postgres/postgres.sh start failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PgServer { port, dir })
}

impl PgServer {
    /// `postgres://dphost@127.0.0.1:PORT/DB` (no password).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://dphost@127.0.0.1:{}/{db}", self.port)
    }

    pub fn url_with_password(&self, db: &str) -> String {
        format!("postgres://dphost:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    pub fn connect(&self, db: &str) -> Result<postgres::Client> {
        postgres::Client::connect(&self.url_with_password(db), postgres::NoTls)
            .with_context(|| format!("connecting to the test PostgreSQL database {db}"))
    }

    /// A new, empty database.
    pub fn new_database(&self) -> Result<String> {
        let name = format!(
            "ws_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        self.connect("postgres")?
            .batch_execute(&format!("CREATE DATABASE {name}"))?;
        Ok(name)
    }
}

/// Where a workspace's dphost keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestStore {
    /// The embedded store in `data/`.
    Sqlite,
    /// A database of the test PostgreSQL.
    Postgres { db: String },
}

impl TestStore {
    /// `DPHOST_TEST_STORE=postgres`: a new database; else SQLite.
    pub fn from_env() -> Result<TestStore> {
        match std::env::var("DPHOST_TEST_STORE").as_deref() {
            Ok("postgres") => Self::postgres(),
            Ok("sqlite") | Ok("") | Err(_) => Ok(TestStore::Sqlite),
            Ok(other) => bail!("DPHOST_TEST_STORE={other}: use sqlite or postgres"),
        }
    }

    pub fn postgres() -> Result<TestStore> {
        Ok(TestStore::Postgres {
            db: server()?.new_database()?,
        })
    }

    /// The `[host]` line that points dphost at it ("" for SQLite).
    pub fn host_line(&self) -> String {
        match self {
            TestStore::Sqlite => String::new(),
            TestStore::Postgres { db } => match server() {
                // A fixed host name: a `dphost once` killed and started
                // again is the same host and takes its leases back at once.
                Ok(s) => format!(
                    "store = \"{}\"\nhost_name = \"{TEST_HOST}\"\n",
                    s.url_with_password(db)
                ),
                Err(e) => panic!("{e:#}"),
            },
        }
    }
}
