//! Stream frame decoders (SSE, NDJSON, AWS event-stream) that give the same events however the
//! bytes are chunked.

use bytes::{Buf, BytesMut};

/// Largest event (or NDJSON line) buffered before the stream is declared unusable, bytes.
pub(crate) const MAX_EVENT_BYTES: usize = 1 << 20;

/// One decoded event: its name (when the framing has one) and its payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// SSE `event:` field, AWS `:event-type` (or `:exception-type`); `None` for the default SSE
    /// event type and for NDJSON.
    pub(crate) name: Option<String>,
    /// SSE `data:` lines joined with `\n`, one NDJSON line, or an AWS message payload.
    pub(crate) data: Vec<u8>,
}

/// Why a stream cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FramingError {
    /// An event grew past [`MAX_EVENT_BYTES`].
    #[error("stream event larger than {MAX_EVENT_BYTES} bytes")]
    TooLarge,
    /// An AWS event-stream message is damaged (checksum, lengths or headers).
    #[error("corrupt event-stream message: {0}")]
    Corrupt(&'static str),
    /// The server sent an AWS event-stream `error` message.
    #[error("the model server sent a stream error: {code}: {message}")]
    StreamError {
        /// `:error-code`.
        code: String,
        /// `:error-message`.
        message: String,
    },
}

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
    AwsEventStream,
}

impl Decoder {
    /// Server-sent events: lines end with LF, CRLF or CR; a blank line dispatches; `:` starts a comment.
    pub fn sse() -> Self {
        Self::new(Kind::Sse)
    }

    /// Newline-delimited JSON: one event per non-blank line.
    pub(crate) fn ndjson() -> Self {
        Self::new(Kind::Ndjson)
    }

    /// AWS event-stream: length-prefixed binary messages with CRC32 checksums.
    pub fn aws_event_stream() -> Self {
        Self::new(Kind::AwsEventStream)
    }

    /// The decoder for the framing a plugin declared in its `info()`.
    pub(crate) fn for_framing(framing: crate::plugins::wit::Framing) -> Self {
        match framing {
            crate::plugins::wit::Framing::Sse => Self::sse(),
            crate::plugins::wit::Framing::Ndjson => Self::ndjson(),
            crate::plugins::wit::Framing::AwsEventStream => Self::aws_event_stream(),
        }
    }

    fn new(kind: Kind) -> Self {
        Decoder { kind, buffer: BytesMut::new(), pending: Event::default(), has_data: false }
    }

    /// Append received bytes.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), FramingError> {
        self.buffer.extend_from_slice(chunk);
        let too_large = match self.kind {
            // A message announces its length up front; `next_event` checks it.
            Kind::AwsEventStream => false,
            Kind::Sse | Kind::Ndjson => {
                self.buffer.len() + self.pending.data.len() > MAX_EVENT_BYTES && self.find_line_end().is_none()
            }
        };
        if too_large {
            return Err(FramingError::TooLarge);
        }
        Ok(())
    }

    /// The next complete event, if the bytes so far contain one.
    pub fn next_event(&mut self) -> Result<Option<Event>, FramingError> {
        if let Kind::AwsEventStream = self.kind {
            return self.next_aws_message();
        }
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
    /// without its blank line does not (the spec discards it). A CR held back in case it was
    /// the first half of a CRLF is a line end after all.
    pub(crate) fn finish(&mut self) -> Option<Event> {
        let rest = std::mem::take(&mut self.buffer);
        match self.kind {
            Kind::Ndjson if !rest.iter().all(u8::is_ascii_whitespace) => {
                Some(Event { name: None, data: rest.trim_ascii().to_vec() })
            }
            Kind::Sse => match rest.strip_suffix(b"\r") {
                Some(line) => self.take_line(line).ok().flatten(),
                None => None,
            },
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

    fn take_line(&mut self, line: &[u8]) -> Result<Option<Event>, FramingError> {
        match self.kind {
            Kind::AwsEventStream => Ok(None),
            Kind::Ndjson => {
                let line = line.trim_ascii();
                Ok((!line.is_empty()).then(|| Event { name: None, data: line.to_vec() }))
            }
            Kind::Sse => {
                if line.is_empty() {
                    // As the SSE specification says, an event whose data is empty is not dispatched.
                    let event = std::mem::take(&mut self.pending);
                    let dispatch = self.has_data && !event.data.is_empty();
                    self.has_data = false;
                    return Ok(dispatch.then_some(event));
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
                            return Err(FramingError::TooLarge);
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

// The AWS event-stream decoder is written here rather than taken from `aws-smithy-eventstream`:
// that crate copies every header name and value into a buffer of its own and measured several
// times slower per event (the micro benchmark `stream_framing_100_events/aws_event_stream`; the
// README's performance section has the figures). The mock encodes with that crate, so these
// tests hold this decoder to AWS's own encoder.

/// AWS event-stream message layout: total length, headers length, prelude CRC (12 bytes), then
/// headers, payload and the message CRC (4 bytes).
const AWS_PRELUDE: usize = 12;
const AWS_OVERHEAD: usize = AWS_PRELUDE + 4;

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

impl Decoder {
    /// Take one whole message off the buffer, verify both checksums and turn it into an event.
    fn next_aws_message(&mut self) -> Result<Option<Event>, FramingError> {
        loop {
            if self.buffer.len() < AWS_PRELUDE {
                return Ok(None);
            }
            let total = be_u32(&self.buffer[0..4]) as usize;
            let headers_len = be_u32(&self.buffer[4..8]) as usize;
            if crc32fast::hash(&self.buffer[0..8]) != be_u32(&self.buffer[8..12]) {
                return Err(FramingError::Corrupt("prelude checksum mismatch"));
            }
            if total > MAX_EVENT_BYTES + AWS_OVERHEAD {
                return Err(FramingError::TooLarge);
            }
            if total < AWS_OVERHEAD || headers_len > total - AWS_OVERHEAD {
                return Err(FramingError::Corrupt("inconsistent lengths"));
            }
            if self.buffer.len() < total {
                return Ok(None);
            }
            let message = self.buffer.split_to(total);
            if crc32fast::hash(&message[..total - 4]) != be_u32(&message[total - 4..]) {
                return Err(FramingError::Corrupt("message checksum mismatch"));
            }
            let headers = AwsHeaders::parse(&message[AWS_PRELUDE..AWS_PRELUDE + headers_len])?;
            let payload = &message[AWS_PRELUDE + headers_len..total - 4];
            match headers.message_type.as_deref() {
                Some("event") | None => {
                    return Ok(Some(Event { name: headers.event_type, data: payload.to_vec() }));
                }
                Some("exception") => {
                    return Ok(Some(Event { name: headers.exception_type, data: payload.to_vec() }));
                }
                Some("error") => {
                    return Err(FramingError::StreamError {
                        code: headers.error_code.unwrap_or_default(),
                        message: headers.error_message.unwrap_or_default(),
                    });
                }
                // Message types added later are skipped, as the format asks.
                Some(_) => continue,
            }
        }
    }
}

/// The string headers of an AWS message this decoder uses; the others are skipped.
#[derive(Debug, Default)]
struct AwsHeaders {
    message_type: Option<String>,
    event_type: Option<String>,
    exception_type: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
}

impl AwsHeaders {
    fn parse(mut bytes: &[u8]) -> Result<Self, FramingError> {
        const SHORT: FramingError = FramingError::Corrupt("truncated header");
        let mut headers = AwsHeaders::default();
        while let Some((&name_len, rest)) = bytes.split_first() {
            let name = rest.get(..usize::from(name_len)).ok_or(SHORT)?;
            let (&kind, rest) = rest[usize::from(name_len)..].split_first().ok_or(SHORT)?;
            let (value, rest) = match kind {
                0 | 1 => (&[][..], rest),
                2 => rest.split_at_checked(1).ok_or(SHORT)?,
                3 => rest.split_at_checked(2).ok_or(SHORT)?,
                4 => rest.split_at_checked(4).ok_or(SHORT)?,
                5 | 8 => rest.split_at_checked(8).ok_or(SHORT)?,
                9 => rest.split_at_checked(16).ok_or(SHORT)?,
                6 | 7 => {
                    let (len, rest) = rest.split_at_checked(2).ok_or(SHORT)?;
                    rest.split_at_checked(usize::from(u16::from_be_bytes([len[0], len[1]]))).ok_or(SHORT)?
                }
                _ => return Err(FramingError::Corrupt("unknown header value type")),
            };
            if kind == 7 {
                let text = || String::from_utf8_lossy(value).into_owned();
                match name {
                    b":message-type" => headers.message_type = Some(text()),
                    b":event-type" => headers.event_type = Some(text()),
                    b":exception-type" => headers.exception_type = Some(text()),
                    b":error-code" => headers.error_code = Some(text()),
                    b":error-message" => headers.error_message = Some(text()),
                    _ => {}
                }
            }
            bytes = rest;
        }
        Ok(headers)
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
        assert_eq!(decoder.push(&input), Err(FramingError::TooLarge));
    }

    use aigw_mock::event_stream::{self, HeaderValue};

    fn aws_events() -> Vec<u8> {
        let mut stream = event_stream::event("messageStart", &serde_json::json!({"role": "assistant"}));
        stream.extend(event_stream::message(
            &[
                (":message-type", HeaderValue::String("event".into())),
                ("retry-count", HeaderValue::Int32(3)),
                (":event-type", HeaderValue::String("contentBlockDelta".into())),
            ],
            "{\"delta\":{\"text\":\"é\"}}".as_bytes(),
        ));
        stream.extend(event_stream::exception("throttlingException", "slow down"));
        stream
    }

    #[test]
    fn aws_event_stream_messages_are_independent_of_chunking() {
        let input = aws_events();
        let whole = decode_in_chunks(Decoder::aws_event_stream(), &input, &[]);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].name.as_deref(), Some("messageStart"));
        assert_eq!(
            whole[1],
            Event { name: Some("contentBlockDelta".into()), data: "{\"delta\":{\"text\":\"é\"}}".into() }
        );
        assert_eq!(whole[2].name.as_deref(), Some("throttlingException"));
        for a in (0..input.len()).step_by(3) {
            for b in (a..input.len()).step_by(5) {
                assert_eq!(decode_in_chunks(Decoder::aws_event_stream(), &input, &[a, b]), whole, "cuts at {a}, {b}");
            }
        }
    }

    #[test]
    fn aws_checksum_damage_is_detected() {
        for position in [2, 9, 20] {
            let mut input = event_stream::event("metadata", &serde_json::json!({"usage": {}}));
            input[position] ^= 0x01;
            let mut decoder = Decoder::aws_event_stream();
            decoder.push(&input).unwrap();
            assert!(
                matches!(decoder.next_event(), Err(FramingError::Corrupt(_) | FramingError::TooLarge)),
                "byte {position}"
            );
        }
    }

    #[test]
    fn aws_error_messages_end_the_stream() {
        let input = event_stream::message(
            &[
                (":message-type", HeaderValue::String("error".into())),
                (":error-code", HeaderValue::String("InternalFailure".into())),
                (":error-message", HeaderValue::String("try again".into())),
            ],
            b"",
        );
        let mut decoder = Decoder::aws_event_stream();
        decoder.push(&input).unwrap();
        assert_eq!(
            decoder.next_event(),
            Err(FramingError::StreamError { code: "InternalFailure".into(), message: "try again".into() })
        );
    }

    #[test]
    fn aws_oversized_message_is_refused_from_its_prelude() {
        let input = event_stream::message(&[], &vec![b'x'; MAX_EVENT_BYTES + 1]);
        let mut decoder = Decoder::aws_event_stream();
        decoder.push(&input[..12]).unwrap();
        assert_eq!(decoder.next_event(), Err(FramingError::TooLarge));
    }

    /// Property: however a stream is cut into chunks (inside UTF-8 sequences and CRLF pairs
    /// included), the decoder yields exactly the events that were encoded.
    mod rechunking {
        use super::*;
        use proptest::prelude::*;

        fn chunked(decoder: Decoder, input: &[u8], raw_cuts: &[usize]) -> Vec<Event> {
            let mut cuts: Vec<usize> = raw_cuts.iter().map(|c| c % (input.len() + 1)).collect();
            cuts.sort_unstable();
            decode_in_chunks(decoder, input, &cuts)
        }

        fn text() -> impl Strategy<Value = String> {
            // ASCII, accents, CJK, emoji (four-byte sequences) and colons; never CR or LF.
            "[a-z :{}\"0-9éß€中😀]{0,12}"
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

            #[test]
            fn sse(events in prop::collection::vec((prop::option::of("[a-z_]{1,10}"), prop::collection::vec(text(), 1..4)), 1..6),
                   eol in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
                   cuts in prop::collection::vec(0usize..4096, 0..12)) {
                let mut input = String::new();
                let mut expected = Vec::new();
                for (name, lines) in &events {
                    input.push_str(&format!(": comment{eol}"));
                    if let Some(name) = name {
                        input.push_str(&format!("event: {name}{eol}"));
                    }
                    for line in lines {
                        input.push_str(&format!("data: {line}{eol}"));
                    }
                    input.push_str(eol);
                    let data = lines.join("\n").into_bytes();
                    if !data.is_empty() {
                        expected.push(Event { name: name.clone(), data });
                    }
                }
                prop_assert_eq!(chunked(Decoder::sse(), input.as_bytes(), &[]), expected.clone());
                prop_assert_eq!(chunked(Decoder::sse(), input.as_bytes(), &cuts), expected);
            }

            #[test]
            fn ndjson(lines in prop::collection::vec("[a-z{}\":0-9éß€中😀]{1,16}", 1..8),
                      crlf in any::<bool>(),
                      cuts in prop::collection::vec(0usize..4096, 0..12)) {
                let eol = if crlf { "\r\n" } else { "\n" };
                let input: String = lines.iter().map(|l| format!("{l}{eol}")).collect();
                let expected: Vec<Event> = lines.iter().map(|l| Event { name: None, data: l.clone().into_bytes() }).collect();
                prop_assert_eq!(chunked(Decoder::ndjson(), input.as_bytes(), &cuts), expected);
            }

            #[test]
            fn aws_event_stream(events in prop::collection::vec(("[a-zA-Z]{1,20}", prop::collection::vec(any::<u8>(), 0..64)), 1..6),
                                cuts in prop::collection::vec(0usize..4096, 0..12)) {
                let mut input = Vec::new();
                let mut expected = Vec::new();
                for (name, payload) in &events {
                    input.extend(event_stream::message(
                        &[(":message-type", HeaderValue::String("event".into())), (":event-type", HeaderValue::String(name.clone().into()))],
                        payload,
                    ));
                    expected.push(Event { name: Some(name.clone()), data: payload.clone() });
                }
                prop_assert_eq!(chunked(Decoder::aws_event_stream(), &input, &cuts), expected);
            }
        }
    }
}
