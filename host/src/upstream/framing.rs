//! Stream frame decoders (SSE, NDJSON) that give the same events however the bytes are chunked.

use bytes::{Buf, BytesMut};

/// Largest event (or NDJSON line) buffered before the stream is declared unusable, bytes.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// One decoded event: the SSE event name (when the framing has one) and its payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// SSE `event:` field; `None` for the default event type and for NDJSON.
    pub name: Option<String>,
    /// SSE `data:` lines joined with `\n`, or one NDJSON line.
    pub data: Vec<u8>,
}

/// The framing error: an event grew past [`MAX_EVENT_BYTES`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("stream event larger than {MAX_EVENT_BYTES} bytes")]
pub struct FrameTooLarge;

/// Decodes a byte stream into events. Feed chunks with [`Decoder::push`], then drain
/// [`Decoder::next_event`] until it returns `None`.
#[derive(Debug)]
pub struct Decoder {
    kind: Kind,
    buffer: BytesMut,
    /// SSE event being assembled.
    pending: Event,
    has_data: bool,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Sse,
    Ndjson,
}

impl Decoder {
    /// Server-sent events: lines end with LF, CRLF or CR; a blank line dispatches; `:` starts a comment.
    pub fn sse() -> Self {
        Self::new(Kind::Sse)
    }

    /// Newline-delimited JSON: one event per non-blank line.
    pub fn ndjson() -> Self {
        Self::new(Kind::Ndjson)
    }

    fn new(kind: Kind) -> Self {
        Decoder { kind, buffer: BytesMut::new(), pending: Event::default(), has_data: false }
    }

    /// Append received bytes.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), FrameTooLarge> {
        self.buffer.extend_from_slice(chunk);
        if self.buffer.len() + self.pending.data.len() > MAX_EVENT_BYTES && self.find_line_end().is_none() {
            return Err(FrameTooLarge);
        }
        Ok(())
    }

    /// The next complete event, if the bytes so far contain one.
    pub fn next_event(&mut self) -> Result<Option<Event>, FrameTooLarge> {
        while let Some((end, terminator)) = self.find_line_end() {
            let line = self.buffer.split_to(end);
            self.buffer.advance(terminator);
            if let Some(event) = self.take_line(&line)? {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }

    /// At end of stream: an NDJSON line without a final newline still counts; an SSE event
    /// without its blank line does not (the spec discards it).
    pub fn finish(&mut self) -> Option<Event> {
        let rest = std::mem::take(&mut self.buffer);
        match self.kind {
            Kind::Ndjson if !rest.iter().all(u8::is_ascii_whitespace) => {
                Some(Event { name: None, data: rest.trim_ascii().to_vec() })
            }
            _ => None,
        }
    }

    /// Position and length of the first line terminator. A CR at the very end of the buffer
    /// might be the first half of a CRLF, so it waits for the next chunk.
    fn find_line_end(&self) -> Option<(usize, usize)> {
        let at = self.buffer.iter().position(|&b| b == b'\n' || b == b'\r')?;
        match (self.buffer[at], self.buffer.get(at + 1)) {
            (b'\n', _) => Some((at, 1)),
            (_, Some(b'\n')) => Some((at, 2)),
            (_, Some(_)) => Some((at, 1)),
            (_, None) => None,
        }
    }

    fn take_line(&mut self, line: &[u8]) -> Result<Option<Event>, FrameTooLarge> {
        match self.kind {
            Kind::Ndjson => {
                let line = line.trim_ascii();
                Ok((!line.is_empty()).then(|| Event { name: None, data: line.to_vec() }))
            }
            Kind::Sse => {
                if line.is_empty() {
                    if !self.has_data {
                        self.pending = Event::default();
                        return Ok(None);
                    }
                    self.has_data = false;
                    return Ok(Some(std::mem::take(&mut self.pending)));
                }
                if line[0] == b':' {
                    return Ok(None);
                }
                let (field, value) = match line.iter().position(|&b| b == b':') {
                    Some(colon) => {
                        let value = &line[colon + 1..];
                        (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                    }
                    None => (line, &b""[..]),
                };
                match field {
                    b"data" => {
                        if self.has_data {
                            self.pending.data.push(b'\n');
                        }
                        if self.pending.data.len() + value.len() > MAX_EVENT_BYTES {
                            return Err(FrameTooLarge);
                        }
                        self.pending.data.extend_from_slice(value);
                        self.has_data = true;
                    }
                    b"event" => self.pending.name = Some(String::from_utf8_lossy(value).into_owned()),
                    _ => {}
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_chunks(mut decoder: Decoder, input: &[u8], cuts: &[usize]) -> Vec<Event> {
        let mut events = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            decoder.push(&input[start..cut]).unwrap();
            while let Some(event) = decoder.next_event().unwrap() {
                events.push(event);
            }
            start = cut;
        }
        events.extend(decoder.finish());
        events
    }

    const SSE: &[u8] = b": keep-alive\r\n\r\nevent: message_start\r\ndata: {\"a\":1}\r\n\r\ndata: line one\ndata: line two\n\ndata: \xc3\xa9t\xc3\xa9\r\rdata: [DONE]\n\n";

    #[test]
    fn sse_events_are_independent_of_chunking() {
        let whole = decode_in_chunks(Decoder::sse(), SSE, &[]);
        assert_eq!(
            whole,
            vec![
                Event { name: Some("message_start".into()), data: b"{\"a\":1}".to_vec() },
                Event { name: None, data: b"line one\nline two".to_vec() },
                Event { name: None, data: "été".as_bytes().to_vec() },
                Event { name: None, data: b"[DONE]".to_vec() },
            ]
        );
        for a in 0..SSE.len() {
            for b in a..SSE.len() {
                assert_eq!(decode_in_chunks(Decoder::sse(), SSE, &[a, b]), whole, "cuts at {a}, {b}");
            }
        }
    }

    #[test]
    fn ndjson_lines_with_and_without_final_newline() {
        let input = b"{\"a\":1}\r\n\n{\"b\":2}";
        let events = decode_in_chunks(Decoder::ndjson(), input, &[3]);
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].data, b"{\"b\":2}");
    }

    #[test]
    fn oversized_event_is_refused() {
        let mut decoder = Decoder::sse();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        let mut input = b"data: ".to_vec();
        input.extend_from_slice(&big);
        assert_eq!(decoder.push(&input), Err(FrameTooLarge));
    }
}
