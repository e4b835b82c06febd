//! Connection-level control for fault injection (`--faults`): a listener
//! whose connections a request handler can abort with a TCP reset, and
//! whose flushes a truncated body can wait for before it breaks off.
//!
//! Only used with `--faults`; without it the server runs on a plain
//! `TcpListener` as before.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

#[derive(Default)]
struct ConnState {
    /// Set by a `reset` fault: refuse all further I/O, close with RST.
    reset: AtomicBool,
    /// Completed flushes (everything hyper had buffered went to the socket).
    flushes: AtomicU64,
    flushed: Notify,
}

/// A handle on one accepted connection, available to handlers as
/// `ConnectInfo<Conn>`.
#[derive(Clone, Default)]
pub struct Conn(Arc<ConnState>);

impl Conn {
    /// Aborts the connection: nothing more is written (not even a response
    /// already on its way), and the socket is closed with a TCP reset.
    pub fn reset(&self) {
        self.0.reset.store(true, Ordering::SeqCst);
    }

    pub fn is_reset(&self) -> bool {
        self.0.reset.load(Ordering::SeqCst)
    }

    /// Waits (at most `limit`) until the connection completes a flush that
    /// starts after this call: everything written before is on the wire.
    pub async fn wait_for_flush(&self, limit: Duration) {
        let seen = self.0.flushes.load(Ordering::SeqCst);
        let wait = async {
            loop {
                let notified = self.0.flushed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.0.flushes.load(Ordering::SeqCst) > seen {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }

    fn flushed(&self) {
        self.0.flushes.fetch_add(1, Ordering::SeqCst);
        self.0.flushed.notify_waiters();
    }
}

/// A TCP connection that obeys its [`Conn`].
pub struct ConnIo {
    stream: TcpStream,
    conn: Conn,
}

fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "reset by fault injection")
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.conn.is_reset() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.conn.is_reset() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.conn.is_reset() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.conn.is_reset() {
            return Poll::Ready(Err(reset_error()));
        }
        let result = std::task::ready!(Pin::new(&mut self.stream).poll_flush(cx));
        if result.is_ok() {
            self.conn.flushed();
        }
        Poll::Ready(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.conn.is_reset() {
            // No FIN: the close in `drop` sends the reset.
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.conn.is_reset() {
            // SO_LINGER 0: closing sends RST instead of FIN.
            if let Err(error) = self.stream.set_zero_linger() {
                tracing::warn!(%error, "cannot set SO_LINGER for a reset");
            }
        }
    }
}

/// Accepts connections as [`ConnIo`]s.
pub struct FaultListener {
    inner: TcpListener,
}

impl FaultListener {
    pub fn new(inner: TcpListener) -> FaultListener {
        FaultListener { inner }
    }
}

impl Listener for FaultListener {
    type Io = ConnIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ConnIo, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, address)) => {
                    // Small slow-body chunks go out as written.
                    let _ = stream.set_nodelay(true);
                    let io = ConnIo {
                        stream,
                        conn: Conn::default(),
                    };
                    return (io, address);
                }
                Err(error) => handle_accept_error(error).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// As axum does for a plain `TcpListener`: a failed handshake is ignored,
/// anything else (e.g. out of file descriptors) is logged and waited out.
async fn handle_accept_error(error: io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accept error");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

impl Connected<IncomingStream<'_, FaultListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, FaultListener>) -> Self {
        stream.io().conn.clone()
    }
}
