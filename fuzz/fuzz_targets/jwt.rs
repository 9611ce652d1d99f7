//! `aigw::fuzzing::jwt` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aigw::fuzzing::jwt(data));
