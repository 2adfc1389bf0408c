//! The README's first command: `pgwarden demo` runs to completion and shows reads on
//! the replica, the tenant guard holding, and the statistics.

use std::process::Command;

#[test]
fn demo_runs_and_reports() {
    let output = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .arg("demo")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run pgwarden demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = |needle: &str| {
        stdout
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{stdout}"))
            .to_string()
    };
    assert!(line("(autocommit read)").contains("replica:"), "{stdout}");
    // Tenant 1 sees only its own ten invoices, even with OR 1 = 1.
    assert!(
        line("WHERE tenant_id = 2 OR 1 = 1").ends_with("row (10)"),
        "{stdout}"
    );
    assert!(line("UPDATE invoices SET amount = 0").ends_with("0 rows changed"));
    assert!(line("VALUES (101, 2, 5)").contains("refused 42501"));
    assert!(line("DO $$").contains("refused 42501"));
    // The other tenants' rows are untouched.
    assert!(
        line("afterwards").contains("tenant 2: 10 rows, sum 1450; tenant 3: 10 rows, sum 1550"),
        "{stdout}"
    );
    assert!(line("cleaned up").contains("temp dirs removed"));
}
