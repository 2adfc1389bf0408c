#![no_main]
//! Coverage-guided fuzzing of `pgwarden::fuzzing::frame_decoder` (see its docs for the properties).

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgwarden::fuzzing::frame_decoder(data));
