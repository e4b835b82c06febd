//! `dphost:connector/log`: the component's diagnostics, tagged with its
//! tenant and connector. A per-run line budget keeps a runaway component
//! from flooding the host's log; what is dropped is counted and reported.

use crate::bindings::dphost::connector::log::{self, Level};
use crate::runtime::RunState;
use wasmtime::component::{HasSelf, Linker};

/// Longest message kept; the rest is cut (with a marker).
const MAX_MESSAGE_BYTES: usize = 4096;

pub fn link(linker: &mut Linker<RunState>) -> anyhow::Result<()> {
    log::add_to_linker::<_, HasSelf<RunState>>(linker, |s| s)?;
    Ok(())
}

/// Per-run log budget.
#[derive(Debug)]
pub struct LogBudget {
    remaining: u32,
    pub dropped: u64,
    /// The last warning or error line, for the run's status.
    pub last_warning: Option<String>,
}

pub fn prepare(lines_per_run: u32) -> LogBudget {
    LogBudget {
        remaining: lines_per_run,
        dropped: 0,
        last_warning: None,
    }
}

impl log::Host for RunState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let budget = &mut self.log;
        if budget.remaining == 0 {
            budget.dropped += 1;
            return Ok(());
        }
        budget.remaining -= 1;
        let message = truncate(message);
        let (connector, tenant) = (&self.scope.connector, &self.scope.tenant);
        match level {
            Level::Trace => tracing::trace!(connector = %connector, tenant = %tenant, "{message}"),
            Level::Debug => tracing::debug!(connector = %connector, tenant = %tenant, "{message}"),
            Level::Info => tracing::info!(connector = %connector, tenant = %tenant, "{message}"),
            Level::Warn => {
                tracing::warn!(connector = %connector, tenant = %tenant, "{message}");
                budget.last_warning = Some(message);
            }
            Level::Error => {
                tracing::error!(connector = %connector, tenant = %tenant, "{message}");
                budget.last_warning = Some(message);
            }
        }
        Ok(())
    }

    fn progress(&mut self, done: u32, total: u32, items: u64) -> wasmtime::Result<()> {
        self.progress = crate::runtime::Progress { done, total, items };
        if let Some(observe) = &self.progress_observer {
            observe(self.progress);
        }
        Ok(())
    }
}

fn truncate(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(" [...]");
    }
    message
}
