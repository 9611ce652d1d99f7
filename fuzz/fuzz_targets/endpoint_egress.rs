//! `aigw::fuzzing::endpoint_egress` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aigw::fuzzing::endpoint_egress(data));
