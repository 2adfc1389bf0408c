//! The README's first command: `pgwarden demo` runs to completion and shows reads on
//! the replica, the tenant guard holding, the statistics, and the advisories it found
//! (a confirmed missing index, the N+1 page loop).

use crate::support::command::{OutputWithin, LONG_RUN};
use std::process::Command;

#[test]
fn demo_runs_and_reports() {
    let output = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .arg("demo")
        .env("RUST_LOG", "warn")
        .output_within(LONG_RUN);
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
    // Advisories: a confirmed index on the events table and the N+1 page loop.
    let index = line("index       public.events");
    assert!(
        index.contains("CREATE INDEX CONCURRENTLY ON public.events (customer_id"),
        "{stdout}"
    );
    assert!(index.contains("  yes  "), "confirmed with hypopg: {stdout}");
    let n_plus_one = line("n_plus_one  orders");
    assert!(n_plus_one.contains("customer_id = any($1)"), "{stdout}");
    assert!(
        line("N+1: `select count(*), inet_server_port() from orders")
            .contains("after each `select id, inet_server_port() from customers"),
        "{stdout}"
    );
    // The report reads cleanly: the proxy's log went to a file.
    assert!(
        !stdout.contains(" INFO ") && !stdout.contains(" WARN "),
        "{stdout}"
    );
    assert!(line("cleaned up").contains("temp dirs removed"));
}
