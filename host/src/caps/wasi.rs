//! The WASI 0.2 base a Rust component links against (`wasi:cli`, clocks,
//! random, io, filesystem, sockets), granted empty: no environment, no
//! arguments, no preopened directories, no sockets, no name lookup. Its
//! stderr is kept (the last few KiB) so a panic message can be reported.

use crate::clock::{Clock, SandboxWallClock};
use crate::runtime::RunState;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime::component::Linker;
use wasmtime_wasi::cli::AsyncStdoutStream;
use wasmtime_wasi::WasiCtx;

/// Bytes of the component's stderr kept for error reports.
const STDERR_TAIL_BYTES: usize = 16 * 1024;

pub fn link(linker: &mut Linker<RunState>) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    Ok(())
}

/// A sandbox with nothing in it but clocks and randomness.
pub fn prepare(clock: &Clock) -> (WasiCtx, StderrTail) {
    let tail = StderrTail::default();
    let mut builder = WasiCtx::builder();
    builder
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .wall_clock(SandboxWallClock(clock.clone()))
        .stderr(AsyncStdoutStream::new(STDERR_TAIL_BYTES, tail.clone()));
    (builder.build(), tail)
}

/// The last `STDERR_TAIL_BYTES` the component wrote to stderr. Writes never
/// fail or block: a chatty component loses its oldest lines, not its run.
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<u8>>>);

impl StderrTail {
    pub fn text(&self) -> String {
        let buf = self.0.lock().expect("stderr tail poisoned");
        let (a, b) = buf.as_slices();
        let mut bytes = a.to_vec();
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).trim().to_string()
    }
}

impl tokio::io::AsyncWrite for StderrTail {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut buf = self.0.lock().expect("stderr tail poisoned");
        buf.extend(data.iter().rev().take(STDERR_TAIL_BYTES).rev());
        let excess = buf.len().saturating_sub(STDERR_TAIL_BYTES);
        buf.drain(..excess);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
