#![no_main]
//! Coverage-guided fuzzing of `pgwarden::fuzzing::tenant_rewriter`: SQL assembled from
//! the input's bytes, rewritten for tenant 1, and the output checked by the guard's
//! enforce-mode checker (see its docs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pgwarden::fuzzing::tenant_rewriter(data);
});
