//! An AWS event-stream message encoder: what Bedrock's ConverseStream sends, for the mock and for
//! decoder tests.

/// One header value; only the types the mock sends.
#[derive(Debug, Clone)]
pub enum HeaderValue<'a> {
    /// Type 7, a UTF-8 string.
    String(&'a str),
    /// Type 4, a 32-bit integer (Bedrock sends none; here to prove decoders skip other types).
    Int(i32),
}

/// Encode one message: prelude (total length, headers length, CRC), headers, payload, CRC.
pub fn message(headers: &[(&str, HeaderValue<'_>)], payload: &[u8]) -> Vec<u8> {
    let mut encoded_headers = Vec::new();
    for (name, value) in headers {
        encoded_headers.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        encoded_headers.extend_from_slice(name.as_bytes());
        match value {
            HeaderValue::String(text) => {
                encoded_headers.push(7);
                encoded_headers.extend_from_slice(&u16::try_from(text.len()).unwrap_or(u16::MAX).to_be_bytes());
                encoded_headers.extend_from_slice(text.as_bytes());
            }
            HeaderValue::Int(number) => {
                encoded_headers.push(4);
                encoded_headers.extend_from_slice(&number.to_be_bytes());
            }
        }
    }
    let total = 12 + encoded_headers.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&u32::try_from(encoded_headers.len()).unwrap_or(u32::MAX).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&encoded_headers);
    out.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    out
}

/// A ConverseStream event: `:message-type: event`, `:event-type: <name>`, JSON payload.
pub fn event(name: &str, payload: &serde_json::Value) -> Vec<u8> {
    message(
        &[
            (":event-type", HeaderValue::String(name)),
            (":content-type", HeaderValue::String("application/json")),
            (":message-type", HeaderValue::String("event")),
        ],
        payload.to_string().as_bytes(),
    )
}

/// An exception message, as Bedrock sends when a stream fails part-way.
pub fn exception(kind: &str, message_text: &str) -> Vec<u8> {
    message(
        &[
            (":exception-type", HeaderValue::String(kind)),
            (":content-type", HeaderValue::String("application/json")),
            (":message-type", HeaderValue::String("exception")),
        ],
        serde_json::json!({ "message": message_text }).to_string().as_bytes(),
    )
}
