//! A client's TCP stream that the gateway can close abortively: when it gives up on a caller
//! (write idle, stream deadline) the connection is reset and what the kernel still holds for the
//! caller is thrown away, instead of trickling out long after the gateway stopped.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A client's stream; closed with a reset instead of a FIN when its [`AbortHandle`] was used.
///
/// A plain close lets the kernel deliver its send buffer first, and on loopback or a fast
/// network that buffer grows to megabytes: a caller reading 20 KiB/s went on receiving for
/// 22 s after the gateway had dropped its connection at the deadline.
#[derive(Debug)]
pub(super) struct AbortableStream {
    stream: TcpStream,
    abort: Arc<AtomicBool>,
}

/// Marks an [`AbortableStream`] to be reset when it is dropped.
#[derive(Debug, Clone)]
pub(super) struct AbortHandle(Arc<AtomicBool>);

impl AbortHandle {
    /// The stream, when dropped, resets the connection and discards its unsent bytes.
    pub(super) fn abort(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl AbortableStream {
    pub(super) fn new(stream: TcpStream) -> (Self, AbortHandle) {
        let abort = Arc::new(AtomicBool::new(false));
        (AbortableStream { stream, abort: Arc::clone(&abort) }, AbortHandle(abort))
    }
}

impl Drop for AbortableStream {
    fn drop(&mut self) {
        // A zero linger time makes close() send RST and free the send buffer at once; it does
        // not block (only a non-zero linger would).
        if self.abort.load(Ordering::Acquire)
            && let Err(error) = self.stream.set_zero_linger()
        {
            tracing::debug!(%error, "could not set a zero linger time on a connection being reset");
        }
    }
}

impl AsyncRead for AbortableStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AbortableStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
