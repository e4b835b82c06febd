//! `dphost:connector/state`: read access to the connector instance's durable
//! state. Keys are namespaced by the host with the connector instance's name,
//! so one tenant's component cannot even name another's keys. Writes go
//! through `sink.commit`, together with the records they describe.

use crate::bindings::dphost::connector::state;
use crate::runtime::RunState;
use wasmtime::component::{HasSelf, Linker};

pub fn link(linker: &mut Linker<RunState>) -> anyhow::Result<()> {
    state::add_to_linker::<_, HasSelf<RunState>>(linker, |s| s)?;
    Ok(())
}

impl state::Host for RunState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        // What a batch in flight sets is read back, never an older value.
        self.settle_commit().await?;
        self.scope
            .store
            .state_get(&self.scope.connector, &key)
            .map_err(|e| super::store_failure(e, "read connector state"))
    }
}
