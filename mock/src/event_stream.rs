//! AWS event-stream messages as Bedrock's ConverseStream sends them, for the mock and for
//! decoder tests, encoded by the AWS SDK's own event-stream crate.

use aws_smithy_eventstream::frame::write_message_to;
pub use aws_smithy_types::event_stream::HeaderValue;
use aws_smithy_types::event_stream::{Header, Message};

/// Encode one message: prelude (total length, headers length, CRC), headers, payload, CRC.
pub fn message(headers: &[(&str, HeaderValue)], payload: &[u8]) -> Vec<u8> {
    let message = headers.iter().fold(Message::new(payload.to_vec()), |message, (name, value)| {
        message.add_header(Header::new(name.to_string(), value.clone()))
    });
    let mut out = Vec::new();
    // Only over-long names or values fail to encode; the mock's are short literals.
    if let Err(error) = write_message_to(&message, &mut out) {
        eprintln!("aigw-mock: cannot encode an event-stream message: {error}");
    }
    out
}

fn text(value: &str) -> HeaderValue {
    HeaderValue::String(value.to_string().into())
}

/// A ConverseStream event: `:message-type: event`, `:event-type: <name>`, JSON payload.
pub fn event(name: &str, payload: &serde_json::Value) -> Vec<u8> {
    message(
        &[(":event-type", text(name)), (":content-type", text("application/json")), (":message-type", text("event"))],
        payload.to_string().as_bytes(),
    )
}

/// An exception message, as Bedrock sends when a stream fails part-way.
pub fn exception(kind: &str, message_text: &str) -> Vec<u8> {
    message(
        &[
            (":exception-type", text(kind)),
            (":content-type", text("application/json")),
            (":message-type", text("exception")),
        ],
        serde_json::json!({ "message": message_text }).to_string().as_bytes(),
    )
}
