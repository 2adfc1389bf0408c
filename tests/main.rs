//! pgwarden's integration tests, built as one test binary.
//!
//! Each file beside this one (`routing.rs`, `cache.rs`, ...) is a module here, not a
//! binary of its own: one binary per file linked the whole dependency tree 28 times,
//! about 2.5 GB of debug executables, which filled the CI machine's disk. Two suites
//! stay binaries of their own because they measure this process as a whole
//! (`protection.rs` reads its RSS, `memory.rs` bounds process-wide accounting) and
//! must not share it with other tests; Cargo.toml lists them (`autotests = false`).
//!
//! Run one suite with `cargo test --test integration routing::`, one test with its
//! full path. A new `tests/*.rs` file must be declared below (or in Cargo.toml): the
//! `every_test_file_is_built` check fails otherwise, since Cargo no longer finds
//! test files by itself.

mod support;

// Fixtures that several suites share, compiled once.
#[allow(dead_code)] // tenant_guard.rs reads every field, tenant_shape.rs a few
#[path = "tenancy/corpus.rs"]
mod corpus;
#[allow(dead_code)] // each suite uses a part
#[path = "driver_pooling/common.rs"]
mod driver_common;
#[path = "faults/load.rs"]
mod load;

mod admin_and_stats;
mod advisories;
mod auth_and_tls;
mod auth_query;
mod bad_input;
mod cache;
mod cluster_harness;
mod connection_fidelity;
mod copy_and_cancel;
mod dashboard_browser;
mod demo;
mod driver_pooling;
mod extended_protocol;
mod faults;
mod fuzz_smoke;
mod jdbc;
mod large_messages;
mod limits;
mod local_sockets;
mod pool_reuse;
mod real_clients;
mod reload;
mod routing;
mod session_fidelity;
mod session_pinning;
mod session_state;
mod shutdown;
mod tenant_defense;
mod tenant_guard;
mod tenant_shape;
mod worker_threads;

/// Every `tests/*.rs` file is either a module of this binary or a test target of its
/// own in Cargo.toml; with `autotests = false` a forgotten file would never run.
#[test]
fn every_test_file_is_built() {
    let tests_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let this_file = include_str!("main.rs");
    let manifest = include_str!("../Cargo.toml");
    let mut forgotten = Vec::new();
    for entry in std::fs::read_dir(&tests_dir).expect("tests directory") {
        let path = entry.expect("directory entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let declared = this_file.contains(&format!("\nmod {stem};"));
        let own_target = manifest.contains(&format!("path = \"tests/{stem}.rs\""));
        if stem != "main" && !declared && !own_target {
            forgotten.push(stem);
        }
    }
    assert!(
        forgotten.is_empty(),
        "tests/{{{}}}.rs: neither a module of tests/main.rs nor a [[test]] in Cargo.toml",
        forgotten.join(",")
    );
}
