//! Follows a client's HTTP/1 request framing as the bytes arrive, so that a chunked body which
//! declares more than the body limit fails at once: hyper would wait for the declared bytes
//! (a chunk size of `ffffffffffffffff` is a valid u64) until the body timeout.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest request head or chunk line followed; past it the guard stops following (hyper
/// refuses heads past its own limit, and chunk extensions past 16 KiB).
const MAX_LINE_BYTES: usize = 64 << 10;

/// Headers parsed per request head (hyper's default limit).
const MAX_HEADERS: usize = 100;

/// The error a read fails with once a chunked body has declared more than the limit; the
/// request's body reader finds it in the error's chain and answers 413.
#[derive(Debug, thiserror::Error)]
#[error("a chunked request body declared {declared} bytes, more than the {limit}-byte limit")]
pub(crate) struct DeclaredPastLimit {
    declared: u64,
    limit: u64,
}

impl DeclaredPastLimit {
    /// Whether `error`, or an error it wraps, is this one.
    pub(crate) fn is_in(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(error) = next {
            if error.is::<DeclaredPastLimit>()
                || error
                    .downcast_ref::<io::Error>()
                    .and_then(io::Error::get_ref)
                    .is_some_and(|inner| inner.is::<DeclaredPastLimit>())
            {
                return true;
            }
            next = error.source();
        }
        false
    }
}

/// Where the reader is in the request stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// In a request head (bytes kept in `line` until its blank line).
    Head,
    /// In a body of known length: bytes left.
    Length(u64),
    /// In a chunk-size line (bytes kept in `line`); the chunks' declared total so far.
    ChunkSize(u64),
    /// In a chunk's data and its CRLF: bytes left; the declared total so far.
    ChunkData(u64, u64),
    /// In the trailer section after the last chunk (each line kept in `line`).
    Trailers,
    /// Not following: HTTP/2, a tunnel, or a stream hyper will refuse anyway.
    Off,
}

/// A client's stream, read through a follower of its HTTP/1 request framing.
#[derive(Debug)]
pub(super) struct ChunkGuard<S> {
    inner: S,
    limit: u64,
    framing: Framing,
    /// The head or line in progress, across reads.
    line: Vec<u8>,
    /// Set once a chunked body declared past the limit: every later read fails with it.
    refused: Option<DeclaredPastLimit>,
}

impl<S> ChunkGuard<S> {
    /// Follow `inner`'s requests, refusing chunked bodies that declare more than `limit` bytes.
    pub(super) fn new(inner: S, limit: usize) -> Self {
        ChunkGuard { inner, limit: limit as u64, framing: Framing::Head, line: Vec::new(), refused: None }
    }

    /// Follow `bytes`; the offset of the chunk-size line that declared past the limit, if one did.
    fn follow(&mut self, mut bytes: &[u8]) -> Option<usize> {
        let total = bytes.len();
        while !bytes.is_empty() {
            let offset = total - bytes.len();
            match self.framing {
                Framing::Off => return None,
                Framing::Length(left) => {
                    let taken = left.min(bytes.len() as u64);
                    bytes = &bytes[taken as usize..];
                    self.framing = if taken == left { Framing::Head } else { Framing::Length(left - taken) };
                }
                Framing::ChunkData(left, declared) => {
                    let taken = left.min(bytes.len() as u64);
                    bytes = &bytes[taken as usize..];
                    self.framing = if taken == left {
                        Framing::ChunkSize(declared)
                    } else {
                        Framing::ChunkData(left - taken, declared)
                    };
                }
                Framing::Head | Framing::ChunkSize(_) | Framing::Trailers => {
                    let rest = self.take_line(bytes)?;
                    // The offending line began before this read when it arrived in pieces.
                    let line_start = offset.saturating_sub(self.line.len() - (bytes.len() - rest.len()));
                    bytes = rest;
                    if let Err(refused) = self.finish_line() {
                        self.refused = Some(refused);
                        self.line.clear();
                        return Some(line_start);
                    }
                    self.line.clear();
                }
            }
        }
        None
    }

    /// Append bytes to `line` up to the end of the unit in progress (a head ends with a blank
    /// line, a chunk-size or trailer line with LF); the bytes after it, or `None` while it is
    /// incomplete. Only the unit's own bytes are copied, never the body that follows it.
    fn take_line<'a>(&mut self, bytes: &'a [u8]) -> Option<&'a [u8]> {
        let end = if self.framing == Framing::Head {
            head_end(&self.line, bytes)
        } else {
            memchr::memchr(b'\n', bytes).map(|at| at + 1)
        };
        let (unit, rest) = bytes.split_at(end.unwrap_or(bytes.len()));
        self.line.extend_from_slice(unit);
        if end.is_none() && self.line.len() > MAX_LINE_BYTES {
            self.stop();
        }
        end.map(|_| rest)
    }

    fn stop(&mut self) {
        self.framing = Framing::Off;
        self.line = Vec::new();
    }

    /// Act on the complete unit in `line`.
    fn finish_line(&mut self) -> Result<(), DeclaredPastLimit> {
        match self.framing {
            Framing::Head => self.framing = body_framing(&self.line).unwrap_or(Framing::Off),
            Framing::ChunkSize(declared) => {
                let Some(size) = chunk_size(&self.line) else {
                    self.stop();
                    return Ok(());
                };
                let declared = declared.saturating_add(size);
                if declared > self.limit {
                    self.stop();
                    return Err(DeclaredPastLimit { declared, limit: self.limit });
                }
                // The data, then its CRLF.
                self.framing = if size == 0 { Framing::Trailers } else { Framing::ChunkData(size + 2, declared) };
            }
            Framing::Trailers => {
                if self.line == b"\r\n" || self.line == b"\n" {
                    self.framing = Framing::Head;
                }
            }
            Framing::Length(_) | Framing::ChunkData(..) | Framing::Off => {}
        }
        if self.line.capacity() > 4096 {
            // A long head once does not keep its buffer for the connection's life.
            self.line = Vec::new();
        }
        Ok(())
    }
}

/// Where in `bytes` the request head begun in `previous` ends (just after its blank line), if
/// it does there. The blank line may straddle the two reads.
fn head_end(previous: &[u8], bytes: &[u8]) -> Option<usize> {
    const BLANK_LINE: &[u8] = b"\r\n\r\n";
    // Begun at the end of `previous`: the more of it there, the sooner it ends in `bytes`.
    for carried in (1..BLANK_LINE.len()).rev() {
        if previous.ends_with(&BLANK_LINE[..carried]) && bytes.starts_with(&BLANK_LINE[carried..]) {
            return Some(BLANK_LINE.len() - carried);
        }
    }
    memchr::memmem::find(bytes, BLANK_LINE).map(|at| at + BLANK_LINE.len())
}

/// How the body after a complete request `head` is framed (RFC 9112 §6.3), or `None` for what
/// the guard does not follow: a head hyper will refuse, HTTP/2's preface, a tunnel.
fn body_framing(head: &[u8]) -> Option<Framing> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    if !request.parse(head).ok()?.is_complete() || request.method == Some("CONNECT") {
        return None;
    }
    let mut chunked = None;
    let mut length: Option<u64> = None;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = std::str::from_utf8(header.value).ok()?;
            // Only the last coding decides (later headers continue the list).
            if let Some(last) = value.rsplit(',').map(str::trim).find(|coding| !coding.is_empty()) {
                chunked = Some(last.eq_ignore_ascii_case("chunked"));
            }
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let value: u64 = std::str::from_utf8(header.value).ok()?.trim().parse().ok()?;
            if length.is_some_and(|known| known != value) {
                return None;
            }
            length = Some(value);
        }
    }
    match (chunked, length) {
        (Some(true), _) => Some(Framing::ChunkSize(0)),
        (Some(false), _) => None,
        (None, Some(0) | None) => Some(Framing::Head),
        (None, Some(length)) => Some(Framing::Length(length)),
    }
}

/// The size a chunk-size line declares (hex digits before any extension), saturating; `None`
/// when it has no digits.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits: Vec<u8> = line.iter().copied().take_while(u8::is_ascii_hexdigit).collect();
    if digits.is_empty() {
        return None;
    }
    Some(digits.iter().fold(0_u64, |size, &digit| {
        let value = (digit as char).to_digit(16).map_or(0, u64::from);
        size.saturating_mul(16).saturating_add(value)
    }))
}

impl<S: AsyncRead + Unpin> AsyncRead for ChunkGuard<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(refused) = &self.refused {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                DeclaredPastLimit { declared: refused.declared, limit: refused.limit },
            )));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let Some(cut) = self.follow(&buf.filled()[before..]) else {
            return Poll::Ready(Ok(()));
        };
        if cut == 0 {
            // Nothing of this read comes before the offending line: fail now (an empty read
            // would mean the end of the stream).
            return self.poll_read(cx, buf);
        }
        // What came before the offending line (the request head, hyper needs it to answer)
        // is handed over; the next read fails.
        buf.set_filled(before + cut);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ChunkGuard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Follow `stream` cut into pieces of `piece` bytes, as reads would hand them over; how many
    /// bytes were handed to hyper before the refusal, if there was one.
    fn refusal(stream: &[u8], piece: usize, limit: usize) -> Option<usize> {
        let mut guard = ChunkGuard::new((), limit);
        let mut offset = 0;
        for part in stream.chunks(piece) {
            if let Some(cut) = guard.follow(part) {
                return Some(offset + cut);
            }
            offset += part.len();
        }
        None
    }

    /// Whether the refusal came with the request head handed over (hyper needs it to answer)
    /// and nothing past the offending line (`at..at + line`).
    fn refused_at(stream: &str, piece: usize, limit: usize, at: usize, line: usize) -> bool {
        refusal(stream.as_bytes(), piece, limit).is_some_and(|handed| (at..=at + line).contains(&handed))
    }

    const POST: &str = "POST /v2/code/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";

    #[test]
    fn a_chunk_declared_past_the_limit_is_refused_at_its_line_however_the_bytes_arrive() {
        let within = format!("{POST}400\r\n{}\r\n0\r\n\r\n", "x".repeat(1024));
        let past = format!("{POST}ffffffffffffffff\r\nxx");
        for piece in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(refusal(within.as_bytes(), piece, 1024), None, "piece {piece}");
            assert!(refused_at(&past, piece, 1024, POST.len(), 18), "piece {piece}");
        }
        // The whole stream in one read: exactly the head is handed over.
        assert_eq!(refusal(past.as_bytes(), 4096, 1024), Some(POST.len()));
        // One byte past the limit, in one chunk or over two.
        assert!(refused_at(&format!("{POST}401\r\n"), 5, 1024, POST.len(), 5));
        let split = format!("{POST}200\r\n{}\r\n201\r\n", "y".repeat(512));
        assert!(refused_at(&split, 5, 1024, split.len() - 5, 5));
    }

    #[test]
    fn pipelined_requests_keep_their_framing() {
        let length = "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\nffffffff\r\n\r\n";
        let chunked = format!("{POST}3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n");
        let get = "GET /monitoring/healthz HTTP/1.1\r\nHost: a\r\n\r\n";
        let stream = format!("{length}{chunked}{get}{POST}10000\r\n");
        let offset = stream.len() - "10000\r\n".len();
        for piece in [1, 5, 11, 4096] {
            assert!(refused_at(&stream, piece, 4096, offset, 7), "piece {piece}");
        }
    }

    #[test]
    fn what_it_does_not_follow_it_leaves_to_hyper() {
        // HTTP/2's preface, a tunnel, a coding other than chunked last, a runaway head.
        for head in [
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        ] {
            assert_eq!(refusal(format!("{head}ffffffffff\r\n").as_bytes(), 3, 16), None, "{head}");
        }
        let runaway = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_LINE_BYTES + 1));
        let mut guard = ChunkGuard::new((), 16);
        assert_eq!(guard.follow(runaway.as_bytes()), None);
        assert_eq!(guard.framing, Framing::Off);
        assert!(guard.line.capacity() == 0, "its buffer is let go");
    }

    #[test]
    fn the_refusal_is_found_in_the_error_chain() {
        let error = io::Error::new(io::ErrorKind::InvalidData, DeclaredPastLimit { declared: 9, limit: 1 });
        assert!(DeclaredPastLimit::is_in(&error));
        assert!(!DeclaredPastLimit::is_in(&io::Error::other("other")));
    }
}
