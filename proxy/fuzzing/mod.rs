//! Fuzz target bodies: what each target feeds to the code under test, and the
//! properties it checks beyond "does not panic". The coverage-guided runners in
//! `fuzz/` (cargo-fuzz, nightly) and the short smoke pass in `tests/fuzz_smoke.rs`
//! (stable, part of `cargo test`) call the same functions, so a crash either finds
//! becomes a regression case for both.
//!
//! Targets:
//! - [`frame_decoder`]: the client and server frame splitter and the extended-protocol
//!   message views (Parse, Bind, Describe/Close/Execute).
//! - [`startup_exchange`]: the startup-phase packet decoder (startup, SSL/GSS
//!   requests, cancel), `options` parsing and the SCRAM client messages.
//! - [`statement_classifier`]: routing classification, the statement shape and the
//!   statistics fingerprint of any text.
//! - [`tenant_rewriter`]: the tenant guard in rewrite mode, on SQL assembled from
//!   grammar fragments, checked by the guard's independent enforce-mode checker.

mod sql_grammar;

pub use sql_grammar::sql_from_bytes;

use std::ops::ControlFlow;

use sqlparser::ast::{Query, Visit, Visitor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::config::{TenancyConfig, TenancyMode};
use crate::protocol::extended::{BindView, ParseView, TargetView};
use crate::protocol::frame::{body, check_frame};
use crate::protocol::{scram, startup};
use crate::route::Classifier;
use crate::scan::shape;
use crate::stats::fingerprint::fingerprint;
use crate::tenant::{self, Decision, RejectionKind};

/// The largest frame the decoder target accepts, small so that lengths matter.
const MAX_FRAME: usize = 1 << 16;

/// Splits `data` into frames as a session does, and reads every Parse, Bind and
/// target message among them. A frame the splitter accepts is whole and in bounds.
pub fn frame_decoder(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some(len)) = check_frame(rest, MAX_FRAME) {
        assert!(
            len >= 5 && len <= rest.len(),
            "frame length {len} out of bounds"
        );
        let frame = &rest[..len];
        let message = body(frame);
        assert_eq!(message.len(), len - 5);
        match frame[0] {
            b'P' => {
                let _ = ParseView::parse(message);
            }
            b'B' => {
                let _ = BindView::parse(message);
            }
            b'D' | b'C' => {
                let _ = TargetView::parse(message, "Describe");
            }
            b'E' => {
                let _ = TargetView::parse(message, "Execute");
            }
            _ => {}
        }
        rest = &rest[len..];
    }
}

/// Decodes `data` as startup-phase packets (each as the proxy would meet it before
/// and after an SSL or GSS answer), and as SCRAM client messages.
pub fn startup_exchange(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some(len)) = startup::check_packet(rest) {
        assert!(len <= rest.len());
        let packet = &rest[..len];
        for (ssl_done, gss_done) in [(false, false), (true, false), (true, true)] {
            if let Ok(startup::StartupPacket::Startup(found)) =
                startup::decode_packet(packet, ssl_done, gss_done)
            {
                let _ = found.negotiation();
            }
        }
        rest = &rest[len..];
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = startup::parse_options(text);
    }
    // A SCRAM exchange: client-first, NUL, client-final.
    let (first, last) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(first) = scram::parse_client_first(first) {
        let nonce = format!("{}server", first.nonce);
        let _ = scram::parse_client_final(last, &first, &nonce);
    }
    let _ = scram::parse_server_first(data, "nonce");
    let _ = scram::parse_server_final(data);
}

/// Classifies, shapes and fingerprints any text; the fingerprint of a text is stable.
pub fn statement_classifier(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let classifier = Classifier::new(&[]);
    let _ = classifier.classify(&text);
    let _ = shape(&text);
    let (id, normalized) = fingerprint(&text);
    assert_eq!(fingerprint(&text).0, id, "fingerprint is not stable");
    let _ = normalized;
}

/// What the rewriter target found for one input, for the smoke test's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RewriteOutcome {
    Unparseable,
    Rejected,
    Passed,
    Rewritten,
}

/// Decides SQL built from `data` for tenant 1 in rewrite mode. Property: whatever the
/// rewriter lets run (its output, or the text unchanged) must satisfy the enforce-mode
/// checker, which demands a predicate pinning the tenant on every scoped reference.
pub fn tenant_rewriter(data: &[u8]) -> RewriteOutcome {
    let sql = sql_from_bytes(data);
    rewrite_and_check(&sql)
}

/// The property of [`tenant_rewriter`] for one statement text.
pub fn rewrite_and_check(sql: &str) -> RewriteOutcome {
    let config = TenancyConfig::default();
    let catalog = tenant::sample_catalog(&config);
    let decide = |mode, text: &str| tenant::decide(&config, &catalog, mode, Some("1"), text);
    let runs = match decide(TenancyMode::Rewrite, sql) {
        Decision::Reject(rejection) if rejection.kind == RejectionKind::Unparseable => {
            return RewriteOutcome::Unparseable
        }
        Decision::Reject(_) => return RewriteOutcome::Rejected,
        Decision::Rewritten { sql: rewritten, .. } => {
            (rewritten.to_string(), RewriteOutcome::Rewritten)
        }
        Decision::Pass | Decision::PassWithParams { .. } => {
            (sql.to_string(), RewriteOutcome::Passed)
        }
    };
    // The checker refuses any CTE that shadows a table name ("cannot check"), safe or
    // not; there it is no oracle, and those inputs only count for crashes.
    if shadows_a_table(&runs.0) {
        return runs.1;
    }
    if let Decision::Reject(rejection) = decide(TenancyMode::Enforce, &runs.0) {
        assert!(
            !matches!(
                rejection.kind,
                RejectionKind::MissingTenantPredicate | RejectionKind::NoTenant
            ),
            "the rewriter let through a statement without the tenant predicate:\n  input:  {sql}\n  output: {}\n  enforce: {rejection:?}",
            runs.0
        );
    }
    runs.1
}

/// Whether a CTE of `sql` is named like a table of the sample catalog.
fn shadows_a_table(sql: &str) -> bool {
    struct CteNames(bool);
    impl Visitor for CteNames {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            let tables = ["orders", "customers", "invoices", "products", "summary"];
            if let Some(with) = &query.with {
                let shadowing = with
                    .cte_tables
                    .iter()
                    .any(|cte| tables.contains(&cte.alias.name.value.to_lowercase().as_str()));
                self.0 |= shadowing;
            }
            ControlFlow::Continue(())
        }
    }
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return false;
    };
    let mut names = CteNames(false);
    let _ = statements.visit(&mut names);
    names.0
}
