#![no_main]
//! Coverage-guided fuzzing of `pgwarden::fuzzing::statement_classifier` (see its docs for the properties).

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgwarden::fuzzing::statement_classifier(data));
