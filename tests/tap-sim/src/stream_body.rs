//! Streaming response bodies. A SIEM window can hold a million events (over
//! a gigabyte of JSON), so bodies are produced on a blocking thread and sent
//! in chunks through a small bounded channel: memory stays flat, and the
//! producer stops as soon as the client goes away.

use std::convert::Infallible;
use std::ops::ControlFlow;

use axum::body::Body;
use bytes::Bytes;
use tokio::sync::mpsc;

const CHUNK_BYTES: usize = 256 * 1024;
const CHUNKS_IN_FLIGHT: usize = 4;

/// Collects text and hands it to the response body in chunks.
pub struct ChunkSink {
    tx: mpsc::Sender<Bytes>,
    buffer: String,
}

impl ChunkSink {
    /// `Break` means the client is gone: stop producing.
    pub fn push(&mut self, text: &str) -> ControlFlow<()> {
        self.buffer.push_str(text);
        if self.buffer.len() >= CHUNK_BYTES {
            self.flush()
        } else {
            ControlFlow::Continue(())
        }
    }

    fn flush(&mut self) -> ControlFlow<()> {
        if self.buffer.is_empty() {
            return ControlFlow::Continue(());
        }
        let chunk = std::mem::replace(&mut self.buffer, String::with_capacity(CHUNK_BYTES));
        match self.tx.blocking_send(Bytes::from(chunk)) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }
}

/// A body whose text `produce` writes (on a blocking thread).
pub fn streamed_body<F>(produce: F) -> Body
where
    F: FnOnce(&mut ChunkSink) -> ControlFlow<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut sink = ChunkSink {
            tx,
            buffer: String::with_capacity(CHUNK_BYTES),
        };
        if produce(&mut sink).is_continue() {
            let _ = sink.flush();
        }
    });
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<Bytes, Infallible>(chunk), rx))
    });
    Body::from_stream(chunks)
}
