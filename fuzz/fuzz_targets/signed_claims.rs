//! `aigw::fuzzing::signed_claims` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aigw::fuzzing::signed_claims(data));
