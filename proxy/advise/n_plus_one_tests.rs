//! The N+1 detector on synthetic statement streams (no PostgreSQL).

use super::*;
use crate::stats::CallContext;

struct Feed {
    detector: Detector,
    published: Arc<ArcSwap<Vec<Advisory>>>,
    now: Instant,
}

impl Feed {
    fn new(settings: NPlusOneConfig) -> Feed {
        let published = Arc::new(ArcSwap::from_pointee(Vec::new()));
        Feed {
            detector: Detector::new(settings, published.clone(), Arc::default()),
            published,
            now: Instant::now(),
        }
    }

    fn run(&mut self, session_key: u64, client: u64, fingerprint: u64, query: &str, params: u64) {
        self.run_sql(b"", session_key, client, fingerprint, query, params);
    }

    fn run_sql(
        &mut self,
        sql: &[u8],
        session_key: u64,
        client: u64,
        fingerprint: u64,
        query: &str,
        params: u64,
    ) {
        self.now += Duration::from_millis(1);
        let query: Arc<str> = Arc::from(query);
        self.detector.observe(&Call {
            fingerprint,
            query: &query,
            sql,
            may_trace: true,
            duration: Duration::from_micros(300),
            context: CallContext {
                client,
                session_key,
                params,
                ended: self.now,
            },
        });
    }

    fn advisories(&mut self) -> Vec<Advisory> {
        self.now += Duration::from_secs(3);
        self.detector.tick(self.now);
        self.published.load_full().as_ref().clone()
    }
}

const PARENT: &str = "select id from posts where author_id = ?";
const CHILD: &str = "select * from comments where post_id = ?";

#[test]
fn a_repeated_loop_across_pooled_connections_is_one_advisory() {
    let mut feed = Feed::new(NPlusOneConfig::default());
    for request in 0..4u64 {
        feed.run(7, request % 2, 1, PARENT, request);
        for child in 0..10u64 {
            // Pooled: the children land on different client connections.
            feed.run(7, 10 + child % 3, 2, CHILD, 100 + child);
        }
    }
    let advisories = feed.advisories();
    assert_eq!(advisories.len(), 1, "{advisories:#?}");
    let details = advisories[0].n_plus_one.as_ref().unwrap();
    assert_eq!(details.child, format!("{:016x}", 2));
    assert_eq!(details.parent, format!("{:016x}", 1));
    assert_eq!(details.column.as_deref(), Some("post_id"));
    assert!((details.burst_size - 10.0).abs() < 1e-9);
}

#[test]
fn short_loops_same_parameters_and_allowed_checks_are_not_reported() {
    let mut feed = Feed::new(NPlusOneConfig::default());
    for request in 0..5u64 {
        feed.run(0, 1, 1, PARENT, request);
        for child in 0..3u64 {
            feed.run(0, 1, 2, CHILD, child);
        }
        // The same parameters every time: a cache problem, not N+1.
        for _ in 0..8 {
            feed.run(0, 1, 3, "select * from settings where key = ?", 5);
        }
    }
    assert!(feed.advisories().is_empty());

    // Lookups repeated between two UPDATEs: not an ORM's parent and children.
    let mut feed = Feed::new(NPlusOneConfig::default());
    for request in 0..5u64 {
        feed.run(
            0,
            1,
            5,
            "update orders set total = total + ? where id = ?",
            request,
        );
        for child in 0..8u64 {
            feed.run(0, 1, 2, CHILD, 10 * request + child);
        }
    }
    assert!(feed.advisories().is_empty());

    let mut feed = Feed::new(NPlusOneConfig {
        allow_uniqueness_checks: true,
        ..NPlusOneConfig::default()
    });
    for request in 0..5u64 {
        feed.run(0, 1, 1, PARENT, request);
        for child in 0..8u64 {
            feed.run(
                0,
                1,
                4,
                "select ? from users where email = ? limit ?",
                child,
            );
        }
    }
    assert!(feed.advisories().is_empty());
}

#[test]
fn sessions_are_kept_apart() {
    let mut feed = Feed::new(NPlusOneConfig::default());
    // Two clients, no session key, interleaved: 3 children each per request.
    for request in 0..6u64 {
        for client in [1, 2] {
            feed.run(0, client, 1, PARENT, request);
        }
        for child in 0..3u64 {
            for client in [1, 2] {
                feed.run(0, client, 2, CHILD, client * 100 + child);
            }
        }
    }
    assert!(feed.advisories().is_empty());
}

#[test]
fn memory_stays_within_its_bytes() {
    let mut feed = Feed::new(NPlusOneConfig {
        max_bytes: 256 * 1024,
        ..NPlusOneConfig::default()
    });
    for client in 0..20_000u64 {
        feed.run(0, client, client % 7, PARENT, client);
    }
    feed.advisories();
    assert!(
        feed.detector.bytes() <= 256 * 1024,
        "{}",
        feed.detector.bytes()
    );
}

#[test]
fn a_sqlcommenter_trace_is_one_session_across_connections() {
    let run = |traced: bool| {
        let mut feed = Feed::new(NPlusOneConfig::default());
        for request in 0..4u64 {
            // One trace per request; its statements land on different connections.
            let sql = format!(
                "SELECT 1 /*traceparent='00-{:032x}-00f067aa0ba902b7-01'*/",
                request + 1
            );
            let sql = if traced { sql.into_bytes() } else { Vec::new() };
            feed.run_sql(&sql, 0, 100 + request, 1, PARENT, request);
            for child in 0..6u64 {
                feed.run_sql(&sql, 0, 200 + 10 * request + child, 2, CHILD, child);
            }
        }
        feed.advisories()
    };
    let traced = run(true);
    assert_eq!(traced.len(), 1, "{traced:#?}");
    assert!((traced[0].n_plus_one.as_ref().unwrap().burst_size - 6.0).abs() < 1e-9);
    // Without the trace, each connection is its own session: nothing to see.
    assert!(run(false).is_empty());
}
