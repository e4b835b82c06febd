//! `dphost:connector/budget`: vendor rate-limit budgets, durable and shared
//! by every connector instance that uses the same credential.
//!
//! The pool key is derived by the host from the API origin and the principal
//! (never from anything the component says), so two tenants' connectors that
//! share a TAP credential share its 1800-a-day pools, and a component cannot
//! spend another credential's budget.

use crate::bindings::dphost::connector::budget;
use crate::runtime::RunState;
use wasmtime::component::{HasSelf, Linker};

pub fn link(linker: &mut Linker<RunState>) -> anyhow::Result<()> {
    budget::add_to_linker::<_, HasSelf<RunState>>(linker, |s| s)?;
    Ok(())
}

/// Longest pool name a component may use.
const MAX_POOL_NAME: usize = 64;

impl RunState {
    fn budget_args(&self, pool: &str, window_seconds: u32) -> wasmtime::Result<(String, i64, i64)> {
        if pool.is_empty() || pool.len() > MAX_POOL_NAME {
            return Err(wasmtime::Error::msg(format!(
                "budget pool names are 1 to {MAX_POOL_NAME} bytes"
            )));
        }
        let now = self
            .scope
            .clock
            .now_ms()
            .map_err(|e| wasmtime::Error::from_anyhow(e.context("the host clock failed")))?;
        let key = format!("{}/{pool}", self.scope.credential_key);
        Ok((key, now, window_seconds as i64 * 1000))
    }
}

impl budget::Host for RunState {
    fn take(
        &mut self,
        pool: String,
        limit: u32,
        window_seconds: u32,
    ) -> wasmtime::Result<Result<u32, u64>> {
        let (key, now, window) = self.budget_args(&pool, window_seconds)?;
        let result = self
            .scope
            .store
            .budget_take(&key, limit, window, now)
            .map_err(|e| super::store_failure(e, "update the request budget"))?;
        if result.is_err() {
            tracing::debug!(connector = %self.scope.connector, "request budget `{pool}` is used up");
        }
        Ok(result.map_err(|retry_at_ms| (retry_at_ms as u64).div_ceil(1000)))
    }

    fn remaining(
        &mut self,
        pool: String,
        limit: u32,
        window_seconds: u32,
    ) -> wasmtime::Result<u32> {
        let (key, now, window) = self.budget_args(&pool, window_seconds)?;
        self.scope
            .store
            .budget_remaining(&key, limit, window, now)
            .map_err(|e| super::store_failure(e, "read the request budget"))
    }
}
