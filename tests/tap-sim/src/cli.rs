//! Command-line interface.

use std::path::PathBuf;

use clap::Parser;

use crate::generate::ShapeMix;
use crate::model::EventKind;

const ABOUT: &str = "Proofpoint TAP API simulator (SIEM API v2 and Threat summary)";

const LONG_ABOUT: &str = "\
Proofpoint TAP API simulator (SIEM API v2 and Threat summary).

Serves /v2/siem/{all,issues,messages/blocked,messages/delivered,clicks/blocked,clicks/permitted} \
and /v2/threat/summary/{id} with HTTP Basic auth, the API's 400 rules, the rolling-24h rate \
limit, late-filed events and indexing lag. Events are generated deterministically from --seed \
(or read from --events files). Windows are [start, end): an event is returned when its filed \
time (the later of its own time and its threat times) is in the window and filed time + \
indexing lag <= server time.

Simulator endpoints (no auth): /_sim/truth[?all=1][&from=T&to=T] (NDJSON of every event \
visible so far) and /_sim/stats (request counts).

With --clock-file, \"now\" is the time written in that file (re-read whenever needed), so tests \
can move simulated time forward. With --faults, authenticated /v2/siem/* and /v2/threat/* \
requests randomly get errors, resets, slow or broken bodies.

The first line on stdout is `listening on http://ADDR`; logs go to stderr (RUST_LOG filters).";

#[derive(Parser, Debug, Clone)]
#[command(name = "tap-sim", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// HTTP Basic user name (TAP "service principal").
    #[arg(long, value_name = "P", default_value = "sim-principal")]
    pub principal: String,

    /// HTTP Basic password (TAP "secret").
    #[arg(long, value_name = "S", default_value = "sim-secret")]
    pub secret: String,

    /// Seed for everything generated: same seed, same events (relative to start).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,

    /// Generated events per hour (all four kinds together).
    #[arg(long, value_name = "N", default_value_t = 120.0, value_parser = non_negative)]
    pub rate: f64,

    /// Events exist from start minus this many hours (also the --retime range).
    #[arg(long, value_name = "H", default_value_t = 24.0, value_parser = non_negative)]
    pub history_hours: f64,

    /// Each event becomes visible a random 0..=M minutes after its filed time.
    #[arg(long, value_name = "M", default_value_t = 30.0, value_parser = non_negative)]
    pub max_lag_min: f64,

    /// Requests per rolling 24 h in each pool (clicks/permitted; all other SIEM endpoints).
    #[arg(long, value_name = "N", default_value_t = 1800)]
    pub rate_limit: usize,

    /// Serve the events in this NDJSON file instead of generated ones (repeatable).
    /// A line is either a whole SIEM response or, with --events-type, one event.
    #[arg(long, value_name = "FILE")]
    pub events: Vec<PathBuf>,

    /// Array that single-event lines belong to. Give it once for all files,
    /// or once per --events file (paired in order).
    #[arg(long, value_name = "NAME", requires = "events")]
    pub events_type: Vec<EventKind>,

    /// Move --events times so the newest is now - 2 min (compressing onto the
    /// last --history-hours if they span more).
    #[arg(long, requires = "events")]
    pub retime: bool,

    /// Shape of generated events: as the live API sends them, as documented, or mixed (~20% documented).
    #[arg(long, value_enum, default_value_t = ShapeMix::Mixed)]
    pub shape: ShapeMix,

    /// Read "now" from this file (one line: an RFC 3339 UTC time such as
    /// 2026-11-20T10:00:00Z, or Unix epoch milliseconds) every time it is
    /// needed, instead of the system clock. Write it atomically (temporary
    /// file + rename); move it forward only. Missing or unparsable: 500.
    #[arg(long, value_name = "FILE")]
    pub clock_file: Option<PathBuf>,

    /// Inject faults into authenticated /v2/siem/* and /v2/threat/*
    /// requests: comma-separated KIND=RATE (rates in [0,1], total <= 1).
    /// Kinds: 500, 503, 429 (spurious, not counted in the pool), reset,
    /// slow-first-byte, slow-body, truncate, malformed.
    /// Example: 500=0.05,503=0.05,reset=0.03,truncate=0.03,malformed=0.02
    #[arg(long, value_name = "SPEC")]
    pub faults: Option<String>,

    /// Seed for which requests get faults [default: --seed].
    #[arg(long, value_name = "N")]
    pub fault_seed: Option<u64>,

    /// Delay of the slow-first-byte and slow-body faults, in seconds.
    #[arg(long, value_name = "S", default_value_t = 5.0, value_parser = non_negative)]
    pub slow_secs: f64,
}

impl Cli {
    /// Each `--events` file with the single-event kind that applies to it.
    pub fn events_files(&self) -> anyhow::Result<Vec<(PathBuf, Option<EventKind>)>> {
        let kinds = &self.events_type;
        if kinds.len() > 1 && kinds.len() != self.events.len() {
            anyhow::bail!(
                "--events-type was given {} times for {} --events files: give it once, or once per file",
                kinds.len(),
                self.events.len()
            );
        }
        Ok(self
            .events
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let kind = kinds.get(i).or(kinds.first()).copied();
                (path.clone(), kind)
            })
            .collect())
    }
}

fn non_negative(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(format!("{text} must be a non-negative number"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["tap-sim"]).unwrap();
        assert_eq!(cli.listen, "127.0.0.1:8080");
        assert_eq!(cli.principal, "sim-principal");
        assert_eq!(cli.secret, "sim-secret");
        assert_eq!(
            (cli.seed, cli.rate, cli.history_hours, cli.max_lag_min),
            (1, 120.0, 24.0, 30.0)
        );
        assert_eq!(cli.rate_limit, 1800);
        assert_eq!(cli.shape, ShapeMix::Mixed);
        assert!(cli.events.is_empty());
        assert_eq!(cli.clock_file, None);
        assert_eq!(cli.faults, None);
        assert_eq!(cli.fault_seed, None);
        assert_eq!(cli.slow_secs, 5.0);
    }

    #[test]
    fn clock_and_fault_options() {
        let cli = Cli::try_parse_from([
            "tap-sim",
            "--clock-file",
            "/tmp/now",
            "--faults",
            "500=0.1,reset=0.2",
            "--fault-seed",
            "9",
            "--slow-secs",
            "0.5",
        ])
        .unwrap();
        assert_eq!(cli.clock_file, Some(PathBuf::from("/tmp/now")));
        assert_eq!(cli.faults.as_deref(), Some("500=0.1,reset=0.2"));
        assert_eq!(cli.fault_seed, Some(9));
        assert_eq!(cli.slow_secs, 0.5);
        assert!(Cli::try_parse_from(["tap-sim", "--slow-secs", "-1"]).is_err());
    }

    #[test]
    fn events_types_pair_with_files() {
        let cli = Cli::try_parse_from([
            "tap-sim",
            "--events",
            "a",
            "--events",
            "b",
            "--events-type",
            "clicksBlocked",
        ])
        .unwrap();
        let files = cli.events_files().unwrap();
        assert!(files
            .iter()
            .all(|(_, k)| *k == Some(EventKind::ClicksBlocked)));

        let cli = Cli::try_parse_from([
            "tap-sim",
            "--events",
            "a",
            "--events",
            "b",
            "--events-type",
            "clicksBlocked",
            "--events-type",
            "messagesDelivered",
        ])
        .unwrap();
        assert_eq!(
            cli.events_files().unwrap()[1].1,
            Some(EventKind::MessagesDelivered)
        );

        assert!(Cli::try_parse_from(["tap-sim", "--events-type", "clicksBlocked"]).is_err());
        assert!(
            Cli::try_parse_from(["tap-sim", "--events", "a", "--events-type", "clicks"]).is_err()
        );
        assert!(Cli::try_parse_from(["tap-sim", "--rate", "-1"]).is_err());
    }
}
