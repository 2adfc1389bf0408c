//! The session's statistics bookkeeping on message sequences: which text a portal
//! runs, and the texts kept for named statements and portals.

use super::*;

/// A `Parse` of the unnamed statement, as the session makes it.
fn parse(stats: &mut SessionStats, unnamed: &mut UnnamedStatement, query: &str) {
    stats.unnamed_replaced(unnamed);
    *unnamed = UnnamedStatement::parsed(query.as_bytes());
}

fn text(stats: &SessionStats, unnamed: &mut UnnamedStatement) -> Vec<u8> {
    stats.portal_text(unnamed).0.to_vec()
}

#[test]
fn a_portal_runs_the_text_it_was_bound_to() {
    let mut stats = SessionStats::new(None);
    let mut unnamed = UnnamedStatement::default();
    assert_eq!(text(&stats, &mut unnamed), b"<unknown portal>");
    stats.bind_unnamed(unnamed.shape.is_some());
    assert_eq!(text(&stats, &mut unnamed), b"<unknown portal>");
    parse(&mut stats, &mut unnamed, "SELECT 1");
    stats.bind_unnamed(unnamed.shape.is_some());
    assert_eq!(text(&stats, &mut unnamed), b"SELECT 1");
    // The next unnamed Parse before the portal's Execute: the portal keeps its
    // text and its shape.
    parse(&mut stats, &mut unnamed, "SELECT 2");
    let (kept, shape) = stats.portal_text(&mut unnamed);
    assert_eq!(&*kept, b"SELECT 1");
    assert_eq!(shape, Some(crate::scan::scan(b"SELECT 1").shape));
    stats.bind_unnamed(true);
    assert_eq!(text(&stats, &mut unnamed), b"SELECT 2");
    for round in 0..3 {
        let query = format!("SELECT {round} + 10");
        parse(&mut stats, &mut unnamed, &query);
        stats.bind_unnamed(true);
        let (sql, shape) = stats.portal_text(&mut unnamed);
        assert_eq!(&*sql, query.as_bytes());
        assert_eq!(shape, Some(crate::scan::scan(query.as_bytes()).shape));
    }
    // A text longer than an event holds inline reads back whole too, from one
    // shared copy while it repeats, and a new text gets its own.
    let long = "x".repeat(1000);
    parse(&mut stats, &mut unnamed, &long);
    stats.bind_unnamed(true);
    let first = stats.portal_text(&mut unnamed).0;
    assert_eq!(&*first, long.as_bytes());
    let again = stats.portal_text(&mut unnamed).0;
    assert_eq!(first.as_ptr(), again.as_ptr(), "one shared copy");
    let other = "y".repeat(1000);
    parse(&mut stats, &mut unnamed, &other);
    assert_eq!(&*stats.portal_text(&mut unnamed).0, long.as_bytes(), "kept");
    stats.bind_unnamed(true);
    assert_eq!(&*stats.portal_text(&mut unnamed).0, other.as_bytes());
}

fn named(stats: &SessionStats, name: &str) -> Option<Vec<u8>> {
    match stats.named_text(name.as_bytes())? {
        PortalText::Named(text, shape) => {
            assert_eq!(shape, crate::scan::scan(&text).shape);
            Some(text.to_vec())
        }
        _ => unreachable!("named_text gives named texts"),
    }
}

#[test]
fn session_pooled_named_statements_keep_their_texts_until_closed() {
    let mut stats = SessionStats::new(None);
    assert_eq!(named(&stats, "s1"), None);
    stats.named_statement_parsed(b"s1", b"SELECT 1");
    stats.named_statement_parsed(b"s2", b"SELECT 2");
    assert_eq!(named(&stats, "s1").as_deref(), Some(&b"SELECT 1"[..]));
    assert_eq!(named(&stats, "s2").as_deref(), Some(&b"SELECT 2"[..]));
    stats.named_statement_closed(b"s1");
    assert_eq!(named(&stats, "s1"), None);
    stats.named_statement_closed(b"never");
    // A name parsed again (after a DEALLOCATE the proxy did not see) runs the new text.
    stats.named_statement_parsed(b"s2", b"SELECT 22");
    assert_eq!(named(&stats, "s2").as_deref(), Some(&b"SELECT 22"[..]));
    assert_eq!(stats.named.as_ref().map(|n| n.bytes), Some(2 + 9));
    stats.named_statement_closed(b"s2");
    assert_eq!(stats.named.as_ref().map(|n| n.bytes), Some(0));
    // Bounded: past the limit the texts kept so far are forgotten.
    let long = vec![b'x'; NAMED_TEXTS_MAX_BYTES / 3];
    for n in 0..4 {
        stats.named_statement_parsed(format!("big{n}").as_bytes(), &long);
    }
    let kept = stats.named.as_ref().unwrap();
    assert!(kept.bytes <= NAMED_TEXTS_MAX_BYTES, "{}", kept.bytes);
    assert_eq!(named(&stats, "big0"), None);
    assert_eq!(named(&stats, "big3"), Some(long));
}

fn portal(stats: &SessionStats, name: &str) -> Vec<u8> {
    let mut unnamed = UnnamedStatement::default();
    stats
        .named_portal_text(name.as_bytes(), &mut unnamed)
        .0
        .to_vec()
}

#[tokio::test]
async fn named_portals_run_what_they_were_bound_to() {
    let recorder = StatsRecorder::start(&crate::config::StatsConfig::default());
    let mut stats = SessionStats::new(None);
    let mut unnamed = UnnamedStatement::default();
    parse(&mut stats, &mut unnamed, "SELECT 1");
    stats.bind_named_portal(b"C_1", PortalText::Unnamed, &mut unnamed, 7);
    // The unnamed statement is parsed anew: the portal still runs its own text.
    parse(&mut stats, &mut unnamed, "SELECT 2");
    stats.bind_unnamed(true);
    assert_eq!(portal(&stats, "C_1"), b"SELECT 1");
    assert_eq!(
        stats.named_portal_text(b"C_1", &mut unnamed).2,
        7,
        "its parameters"
    );
    assert_eq!(
        text(&stats, &mut unnamed),
        b"SELECT 2",
        "the unnamed portal"
    );
    stats.portal_closed(&recorder, b"C_1");
    assert_eq!(portal(&stats, "C_1"), b"<unknown portal>");
    // A few kept at once, the oldest forgotten first.
    let named = PortalText::Named(Bytes::from_static(b"SELECT 3"), unnamed.shape.unwrap());
    for n in 0..=NAMED_PORTALS_KEPT {
        let name = format!("C_{n}");
        stats.bind_named_portal(name.as_bytes(), named.clone(), &mut unnamed, 0);
    }
    assert_eq!(stats.named_portals.len(), NAMED_PORTALS_KEPT);
    assert_eq!(portal(&stats, "C_0"), b"<unknown portal>");
    assert_eq!(portal(&stats, "C_1"), b"SELECT 3");
    // A name bound again replaces its entry.
    stats.bind_named_portal(b"C_1", PortalText::Unnamed, &mut unnamed, 0);
    assert_eq!(stats.named_portals.len(), NAMED_PORTALS_KEPT);
    assert_eq!(portal(&stats, "C_1"), b"SELECT 2");
    // The transaction's end drops every portal in PostgreSQL: their texts go too.
    stats.transaction_ended(&recorder);
    assert!(stats.named_portals.is_empty());
    assert_eq!(portal(&stats, "C_1"), b"<unknown portal>");
}
