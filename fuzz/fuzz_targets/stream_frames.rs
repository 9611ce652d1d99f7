//! `aigw::fuzzing::stream_frames` on arbitrary bytes: the first picks the variant, the rest is the input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((selector, input)) = data.split_first() {
        aigw::fuzzing::stream_frames(*selector, input);
    }
});
