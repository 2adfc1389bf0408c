#![no_main]
//! Coverage-guided fuzzing of `pgwarden::fuzzing::startup_exchange` (see its docs for the properties).

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgwarden::fuzzing::startup_exchange(data));
