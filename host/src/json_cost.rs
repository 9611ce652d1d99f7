//! What a JSON document will cost in memory once parsed, estimated in one pass over its bytes
//! without parsing it, so that a body whose parse would take far more than its size is refused
//! before it is parsed.
//!
//! Parsed JSON takes more memory than its text, and how much more depends on its shape, not its
//! size: measured with serde_json (`preserve_order`, a 72-byte `Value`), a long string costs
//! 1.0× its text, chat messages 15×, an array of numbers 47×, and objects of one key 57×. A
//! 4 MiB body of `{"a":1},` repeated would take some 230 MiB, so sixteen such requests at
//! once would take gigabytes; the body limit alone bounds none of that.

/// Estimated heap per value (scalar, array, object, or object key): the 72-byte `Value` or
/// map entry, with the slack of the vector it grew in.
const PER_VALUE: u64 = 96;

/// Estimated heap per object beyond its values: the map's index table and the spare room of
/// its entry vector (a one-key object measured 460 bytes in all).
const PER_OBJECT: u64 = 400;

/// The heap a parse of `json` into `serde_json::Value` would take, in bytes: an estimate that
/// errs high (measured 1.0–1.8× the real figure on the shapes above). Not a validator: on
/// malformed input it still returns a figure, and the parse that follows reports the error.
pub(crate) fn estimated_parse_bytes(json: &[u8]) -> u64 {
    let (mut values, mut objects, mut text) = (0_u64, 0_u64, 0_u64);
    let mut at = 0;
    while at < json.len() {
        match json[at] {
            b'"' => {
                let end = string_end(json, at + 1);
                values += 1;
                text += (end - at - 1) as u64;
                at = end + 1;
                continue;
            }
            b'{' => {
                objects += 1;
                values += 1;
            }
            b'[' => values += 1,
            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                values += 1;
                // The rest of the number or literal is one value.
                while at + 1 < json.len()
                    && matches!(json[at + 1], b'0'..=b'9' | b'a'..=b'z' | b'.' | b'+' | b'-' | b'E')
                {
                    at += 1;
                }
            }
            _ => {}
        }
        at += 1;
    }
    values.saturating_mul(PER_VALUE).saturating_add(objects.saturating_mul(PER_OBJECT)).saturating_add(text)
}

/// The index of the quote that ends the string whose contents start at `from` (or the end of
/// `json` when it never ends). Quotes are rare in code and prose, escapes are not (every
/// newline is one), so this looks for quotes and counts the backslashes before each.
fn string_end(json: &[u8], mut from: usize) -> usize {
    while let Some(offset) = memchr::memchr(b'"', &json[from..]) {
        let quote = from + offset;
        let backslashes = json[..quote].iter().rev().take_while(|&&byte| byte == b'\\').count();
        // After an odd number of backslashes the quote is escaped (`\"`); after an even number
        // it ends the string (`\\"` is an escaped backslash, then the quote).
        if backslashes % 2 == 0 {
            return quote;
        }
        from = quote + 1;
    }
    json.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_costs_its_size_and_small_values_cost_their_slots() {
        let text = format!(r#"{{"a":"{}"}}"#, "x".repeat(100_000));
        let estimate = estimated_parse_bytes(text.as_bytes());
        assert!((100_000..=101_000).contains(&estimate), "{estimate}");
        let numbers = format!("[{}0]", "0,".repeat(99_999));
        assert_eq!(estimated_parse_bytes(numbers.as_bytes()), 100_001 * PER_VALUE);
        let objects = format!("[{}{{}}]", "{},".repeat(999));
        assert_eq!(estimated_parse_bytes(objects.as_bytes()), 1001 * PER_VALUE + 1000 * PER_OBJECT);
    }

    #[test]
    fn structure_inside_strings_and_escapes_is_text() {
        assert_eq!(estimated_parse_bytes(br#"["{[1,2]}"]"#), 2 * PER_VALUE + 7);
        assert_eq!(estimated_parse_bytes(br#"["a\"[1]\\", 1e-5, true]"#), 4 * PER_VALUE + 8);
        // An unterminated string or a trailing escape ends the count without a panic.
        assert_eq!(estimated_parse_bytes(br#"["abc"#), 2 * PER_VALUE + 3);
        assert_eq!(estimated_parse_bytes(br#"["ab\"#), 2 * PER_VALUE + 3);
    }

    proptest::proptest! {
        /// Any bytes at all (a body is checked before it is known to be JSON) get a figure,
        /// and the text of JSON strings is never estimated below its size.
        #[test]
        fn any_bytes_get_an_estimate_and_strings_count_their_text(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            texts in proptest::collection::vec("[^\"\\\\]{0,40}", 0..8),
        ) {
            let _ = estimated_parse_bytes(&noise);
            let json = serde_json::to_vec(&texts).unwrap_or_default();
            let text: usize = texts.iter().map(String::len).sum();
            proptest::prop_assert!(estimated_parse_bytes(&json) >= text as u64);
        }
    }

    #[test]
    fn the_estimate_errs_high_against_the_measured_shapes() {
        // Heap measured with a counting allocator for serde_json 1.0 with preserve_order.
        let measured = [
            (format!("[{}0]", "0,".repeat(100_000)), 9_437_184),
            (
                format!(
                    "[{}1]",
                    (0..20_000).map(|i| format!(r#"{{"role":"user","content":"m{i}"}},"#)).collect::<String>()
                ),
                10_048_186,
            ),
            (format!("[{}1]", r#"{"a":1},"#.repeat(50_000)), 22_968_592),
        ];
        for (json, heap) in measured {
            let estimate = estimated_parse_bytes(json.as_bytes());
            assert!(estimate >= heap && estimate <= heap * 2, "{estimate} against {heap}");
        }
    }
}
