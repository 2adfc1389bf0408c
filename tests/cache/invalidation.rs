//! The result cache's invalidation against real PostgreSQL: committed writes
//! invalidate exactly their tables (schema-qualified, same-named in two schemas,
//! rolled back), writes the statement does not name
//! (triggers, `TRUNCATE ... CASCADE`, `COMMIT PREPARED`), row security policies (what
//! they read, and whether what they call keeps the result exact), another instance within
//! 100 ms, and writes that bypass pgwarden through the logical slot (`wal_invalidation`).
//! Keyed writes are in `keyed_writes.rs`.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_writes_invalidate_exactly_their_tables() {
    let cluster = cluster(0, &[]);
    setup(
        &cluster,
        "CREATE SCHEMA a; CREATE SCHEMA b;
         CREATE TABLE a.t (id int primary key, v int); CREATE TABLE b.t (id int primary key, v int);
         INSERT INTO a.t VALUES (1, 10); INSERT INTO b.t VALUES (1, 20);
         CREATE TABLE other (id int primary key, v int); INSERT INTO other VALUES (1, 1);
         CREATE FUNCTION set_other(int) RETURNS SETOF int LANGUAGE sql VOLATILE
           AS 'UPDATE other SET v = $1 WHERE id = 1 RETURNING v';",
    )
    .await;
    let proxy = start(&cluster, |_| {}).await;
    let mut c1 = wire(&proxy).await;
    let mut c2 = wire(&proxy).await;
    let read_a = "/* pgwarden:cache */ SELECT v FROM a.t WHERE id = 1";
    let read_b = "/* pgwarden:cache */ SELECT v FROM b.t WHERE id = 1";
    let read_other = "/* pgwarden:cache */ SELECT v FROM other WHERE id = 1";
    // Same connection, autocommit, unqualified name resolved through search_path.
    simple_value(&mut c1, "SET search_path = a, public").await;
    for sql in [read_a, read_b, read_other] {
        simple_value(&mut c1, sql).await;
    }
    simple_value(&mut c1, "UPDATE t SET v = 11 WHERE id = 1").await;
    let before = hits(&proxy);
    assert_eq!(simple_value(&mut c1, read_a).await.as_deref(), Some("11"));
    assert_eq!(simple_value(&mut c1, read_b).await.as_deref(), Some("20"));
    assert_eq!(
        simple_value(&mut c1, read_other).await.as_deref(),
        Some("1")
    );
    assert_eq!(hits(&proxy), before + 2, "b.t and other stayed cached");

    // Another connection, in a transaction: invalidated at COMMIT, before the client
    // sees it.
    simple_value(&mut c2, "BEGIN").await;
    simple_value(&mut c2, "UPDATE b.t SET v = 21 WHERE id = 1").await;
    assert_eq!(simple_value(&mut c1, read_b).await.as_deref(), Some("20"));
    simple_value(&mut c2, "COMMIT").await;
    assert_eq!(simple_value(&mut c1, read_b).await.as_deref(), Some("21"));
    assert_eq!(simple_value(&mut c2, read_b).await.as_deref(), Some("21"));

    // A rolled-back write leaves the committed value.
    simple_value(&mut c2, "BEGIN").await;
    simple_value(&mut c2, "UPDATE b.t SET v = 99 WHERE id = 1").await;
    simple_value(&mut c2, "ROLLBACK").await;
    assert_eq!(simple_value(&mut c1, read_b).await.as_deref(), Some("21"));
    assert_eq!(simple_value(&mut c1, read_b).await.as_deref(), Some("21"));

    // Extended protocol write of a prepared statement, executed twice.
    let mut c3 = wire(&proxy).await;
    for v in ["30", "31"] {
        let frames = within(
            "prepared update",
            c3.extended(
                "bump",
                Some("UPDATE other SET v = $1 WHERE id = 1").filter(|_| v == "30"),
                &[Some(v.as_bytes())],
                false,
                0,
            ),
        )
        .await;
        assert!(frames.iter().all(|f| f[0] != b'E'));
        assert_eq!(simple_value(&mut c1, read_other).await.as_deref(), Some(v));
    }

    // A volatile function called in FROM may write anything.
    simple_value(&mut c1, read_other).await;
    simple_value(&mut c2, "SELECT * FROM set_other(40)").await;
    assert_eq!(
        simple_value(&mut c1, read_other).await.as_deref(),
        Some("40")
    );

    // DDL drops the database's entries; same-named tables stay apart.
    simple_value(&mut c1, read_a).await;
    simple_value(&mut c2, "ALTER TABLE a.t ADD COLUMN w int").await;
    let before = proxy.runtime.cache.totals();
    assert_eq!(simple_value(&mut c1, read_a).await.as_deref(), Some("11"));
    assert_eq!(
        proxy.runtime.cache.totals().hits,
        before.hits,
        "DDL cleared"
    );

    // search_path is part of the key: the same text reads a different table.
    let unqualified = "/* pgwarden:cache */ SELECT v FROM t WHERE id = 1";
    let mut in_a = wire(&proxy).await;
    let mut in_b = wire(&proxy).await;
    simple_value(&mut in_a, "SET search_path = a").await;
    simple_value(&mut in_b, "SET search_path = b").await;
    for _ in 0..2 {
        assert_eq!(
            simple_value(&mut in_a, unqualified).await.as_deref(),
            Some("11")
        );
        assert_eq!(
            simple_value(&mut in_b, unqualified).await.as_deref(),
            Some("21")
        );
    }
    simple_value(&mut c2, "UPDATE b.t SET v = 22 WHERE id = 1").await;
    assert_eq!(
        simple_value(&mut in_b, unqualified).await.as_deref(),
        Some("22")
    );
    assert_eq!(
        simple_value(&mut in_a, unqualified).await.as_deref(),
        Some("11")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_invalidates_within_100ms() {
    let cluster = cluster(0, &[]);
    setup(
        &cluster,
        "CREATE TABLE t (id int primary key, v int); INSERT INTO t VALUES (1, 0);",
    )
    .await;
    let a = start(&cluster, |_| {}).await;
    let b = start(&cluster, |_| {}).await;
    let mut on_a = wire(&a).await;
    let mut on_b = wire(&b).await;
    let sql = "/* pgwarden:cache */ SELECT v FROM t WHERE id = 1";
    let mut worst = Duration::ZERO;
    for round in 1..=10 {
        assert_eq!(
            simple_value(&mut on_a, sql).await,
            Some((round - 1).to_string())
        );
        assert_eq!(
            simple_value(&mut on_b, sql).await,
            Some((round - 1).to_string())
        );
        simple_value(&mut on_b, &format!("UPDATE t SET v = {round} WHERE id = 1")).await;
        let committed = Instant::now();
        // The writing session is never served the old entry.
        assert_eq!(simple_value(&mut on_b, sql).await, Some(round.to_string()));
        loop {
            if simple_value(&mut on_a, sql).await == Some(round.to_string()) {
                break;
            }
            assert!(
                committed.elapsed() < Duration::from_secs(2),
                "instance A never invalidated"
            );
        }
        worst = worst.max(committed.elapsed());
    }
    eprintln!("worst cross-instance invalidation: {worst:?}");
    assert!(worst < Duration::from_millis(100), "{worst:?}");
}

/// A named statement prepared again with another text where its writes are not noted
/// (a `BEGIN READ ONLY` transaction runs on the replica, which may prepare an `UPDATE`)
/// is not taken for its old text (a read, "nothing to note") when it runs on the
/// primary: the `UPDATE`'s commit invalidates what it changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_again_on_a_replica_is_not_taken_for_its_old_text() {
    use crate::support::wire::{cstring, error_code, frame};
    let cluster = cluster(1, &[]);
    setup(
        &cluster,
        "CREATE TABLE t (id int primary key, v int); INSERT INTO t VALUES (1, 0);",
    )
    .await;
    cluster
        .wait_for_replication(Duration::from_secs(10))
        .unwrap();
    let proxy = start(&cluster, |c| {
        route_to_replicas(c, &cluster);
        c.cache.ttl_ms = 600_000;
    })
    .await;
    let cached = "/* pgwarden:cache */ SELECT v FROM t WHERE id = 1";
    let mut reader = wire(&proxy).await;
    assert_eq!(simple_value(&mut reader, cached).await, Some("0".into()));

    let mut app = wire(&proxy).await;
    let no_error = |step: &str, frames: &[Vec<u8>]| {
        assert_eq!(error_code(frames), None, "{step}");
    };
    // "w" reads first, prepared and run on the primary: noted as a read.
    no_error("BEGIN", &within("BEGIN", app.simple("BEGIN")).await);
    let read = within(
        "w as a read",
        app.extended("w", Some("SELECT v FROM t WHERE id = 1"), &[], false, 0),
    )
    .await;
    assert_eq!(first_value(&read), Some("0".into()));
    no_error("COMMIT", &within("COMMIT", app.simple("COMMIT")).await);

    // Closed, and prepared again as an UPDATE in a read-only transaction (the replica).
    no_error(
        "BEGIN READ ONLY",
        &within("BEGIN READ ONLY", app.simple("BEGIN READ ONLY")).await,
    );
    let mut again = frame(b'C', b"Sw\0");
    let mut parse = Vec::new();
    cstring(&mut parse, "w");
    cstring(
        &mut parse,
        "UPDATE t SET v = v + 1 WHERE id = 1 RETURNING v",
    );
    parse.extend_from_slice(&0i16.to_be_bytes());
    again.extend(frame(b'P', &parse));
    again.extend(frame(b'S', &[]));
    within("send Close, Parse, Sync", app.send(&again)).await;
    let prepared = within("w prepared again", app.answer()).await;
    no_error("prepared again", &prepared);
    assert!(prepared.iter().any(|f| f[0] == b'1'), "ParseComplete");
    no_error("COMMIT", &within("COMMIT", app.simple("COMMIT")).await);

    // Run on the primary, outside a transaction: its commit invalidates the entry.
    let updated = within("w as an UPDATE", app.extended("w", None, &[], false, 0)).await;
    no_error("w as an UPDATE", &updated);
    assert_eq!(first_value(&updated), Some("1".into()));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Another client, so read-your-writes does not stand in for the invalidation.
        let seen = simple_value(&mut reader, cached).await;
        if seen == Some("1".into()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cached read still answers {seen:?} after the UPDATE committed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_invalidation_sees_writes_that_bypass_pgwarden() {
    let cluster = cluster(0, &["wal_level = logical", "max_replication_slots = 10"]);
    setup(
        &cluster,
        "CREATE TABLE t (id int primary key, v int); INSERT INTO t VALUES (1, 0);",
    )
    .await;
    let proxy = start(&cluster, |c| {
        c.cache.wal_invalidation = true;
        c.cache.ttl_ms = 600_000;
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy
        .runtime
        .cache
        .wal_status()
        .iter()
        .any(|(_, s)| s.starts_with("reading slot"))
    {
        assert!(
            Instant::now() < deadline,
            "slot reader started: {:?}",
            proxy.runtime.cache.wal_status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = wire(&proxy).await;
    let sql = "/* pgwarden:cache */ SELECT v FROM t WHERE id = 1";
    for round in 1..=3 {
        simple_value(&mut c, sql).await;
        let before = hits(&proxy);
        simple_value(&mut c, sql).await;
        assert_eq!(hits(&proxy), before + 1);
        let out = cluster
            .primary()
            .psql(USER, DATABASE, &format!("UPDATE t SET v = {round}"))
            .unwrap();
        let _ = out;
        let written = Instant::now();
        loop {
            if simple_value(&mut c, sql).await == Some(round.to_string()) {
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(3),
                "direct write never invalidated"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!("direct write seen after {:?}", written.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_the_statement_does_not_name_invalidate_too() {
    let cluster = cluster(0, &["max_prepared_transactions = 4"]);
    setup(
        &cluster,
        "CREATE TABLE src (id int primary key, v int);
         CREATE TABLE mirror (id int primary key, v int);
         CREATE TABLE stamped (id int primary key, v int, at timestamptz);
         CREATE TABLE through_fn (id int primary key, v int);
         CREATE TABLE untouched (id int primary key, v int);
         CREATE TABLE calls_fn (id int primary key, v int);
         CREATE TABLE parent (id int primary key);
         CREATE TABLE child (id int primary key, parent int REFERENCES parent (id));
         INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);
         INSERT INTO src VALUES (1, 1); INSERT INTO mirror VALUES (1, 1);
         INSERT INTO stamped VALUES (1, 1, now()); INSERT INTO through_fn VALUES (1, 1);
         INSERT INTO untouched VALUES (1, 1);
         CREATE FUNCTION copy_to_mirror() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN UPDATE mirror SET v = NEW.v WHERE id = NEW.id; RETURN NEW; END $$;
         CREATE TRIGGER src_copies AFTER UPDATE ON src
           FOR EACH ROW EXECUTE FUNCTION copy_to_mirror();
         CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN IF (NEW.v > 0) THEN NEW.at := now(); END IF; RETURN NEW; END $$;
         CREATE TRIGGER stamped_at BEFORE UPDATE ON stamped
           FOR EACH ROW EXECUTE FUNCTION stamp();
         CREATE FUNCTION bump_through_fn(int) RETURNS int LANGUAGE sql VOLATILE
           AS 'UPDATE through_fn SET v = $1 WHERE id = 1 RETURNING v';
         CREATE FUNCTION call_bump() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN IF bump_through_fn(NEW.v) > 0 THEN RETURN NEW; END IF; RETURN NEW; END $$;
         CREATE TRIGGER calls_bump BEFORE INSERT ON calls_fn
           FOR EACH ROW EXECUTE FUNCTION call_bump();",
    )
    .await;
    let proxy = start(&cluster, |_| {}).await;
    let mut reader = wire(&proxy).await;
    let mut writer = wire(&proxy).await;
    let read = |table: &str| format!("/* pgwarden:cache */ SELECT v FROM {table} WHERE id = 1");
    let (mirror, through_fn, untouched) = (read("mirror"), read("through_fn"), read("untouched"));
    for sql in [&mirror, &through_fn, &untouched] {
        simple_value(&mut reader, sql).await;
    }

    // An UPDATE of src writes mirror through its trigger.
    simple_value(&mut writer, "UPDATE src SET v = 2 WHERE id = 1").await;
    assert_eq!(
        simple_value(&mut reader, &mirror).await.as_deref(),
        Some("2")
    );

    // A trigger that only sets its own row's columns drops nothing else.
    simple_value(&mut reader, &untouched).await;
    let before = hits(&proxy);
    simple_value(&mut writer, "UPDATE stamped SET v = 2 WHERE id = 1").await;
    assert_eq!(
        simple_value(&mut reader, &untouched).await.as_deref(),
        Some("1")
    );
    assert_eq!(hits(&proxy), before + 1, "untouched stayed cached");

    // A trigger calling a volatile function that writes another table.
    simple_value(&mut writer, "INSERT INTO calls_fn VALUES (1, 5)").await;
    assert_eq!(
        simple_value(&mut reader, &through_fn).await.as_deref(),
        Some("5")
    );

    // TRUNCATE ... CASCADE empties the tables that reference the one it names.
    let children = "/* pgwarden:cache */ SELECT count(*) FROM child";
    assert_eq!(
        simple_value(&mut reader, children).await.as_deref(),
        Some("1")
    );
    simple_value(&mut writer, "TRUNCATE parent CASCADE").await;
    assert_eq!(
        simple_value(&mut reader, children).await.as_deref(),
        Some("0")
    );

    // A prepared transaction's writes count when COMMIT PREPARED commits them, from
    // whichever session: a read in between fills the entry with what was committed.
    simple_value(&mut writer, "BEGIN").await;
    simple_value(&mut writer, "UPDATE untouched SET v = 9 WHERE id = 1").await;
    simple_value(&mut writer, "PREPARE TRANSACTION 'two_phase'").await;
    assert_eq!(
        simple_value(&mut reader, &untouched).await.as_deref(),
        Some("1")
    );
    assert_eq!(
        simple_value(&mut reader, &untouched).await.as_deref(),
        Some("1")
    );
    let mut committer = wire(&proxy).await;
    simple_value(&mut committer, "COMMIT PREPARED 'two_phase'").await;
    assert_eq!(
        simple_value(&mut reader, &untouched).await.as_deref(),
        Some("9")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_security_policies_count_as_part_of_the_read() {
    let cluster = cluster(0, &[]);
    setup(
        &cluster,
        "CREATE ROLE member LOGIN PASSWORD 'member-secret';
         CREATE TABLE memberships (member name, tenant text);
         INSERT INTO memberships VALUES ('member', 'a');
         CREATE TABLE docs (tenant text, body text);
         INSERT INTO docs VALUES ('a', 'doc of a'), ('b', 'doc of b');
         ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
         CREATE POLICY member_of ON docs USING
           (tenant IN (SELECT m.tenant FROM memberships m WHERE m.member = current_user));
         CREATE TABLE news (body text, expires timestamptz);
         INSERT INTO news VALUES ('fresh', now() + interval '1 day');
         ALTER TABLE news ENABLE ROW LEVEL SECURITY;
         CREATE POLICY unexpired ON news USING (expires > now());
         CREATE TABLE notes (tenant text, body text);
         INSERT INTO notes VALUES ('a', 'note of a'), ('b', 'note of b');
         ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
         CREATE POLICY by_setting ON notes USING (tenant = current_setting('app.tenant', true));
         GRANT SELECT ON docs, memberships, news, notes TO member;",
    )
    .await;
    let proxy = start(&cluster, |c| {
        c.auth.users.push(pgwarden::config::UserConfig {
            name: "member".into(),
            password: Some("member-secret".into()),
            server_password: None,
        });
    })
    .await;
    let member_login = || Wire::tcp(proxy.port(), "member", DATABASE, &[]);
    let mut member = within("member", member_login()).await;

    // A policy that reads another table: cached, and a write to that table (the
    // membership revoked) invalidates what the policy let through.
    let docs = "/* pgwarden:cache */ SELECT count(*) FROM docs";
    assert_eq!(simple_value(&mut member, docs).await.as_deref(), Some("1"));
    let before = hits(&proxy);
    assert_eq!(simple_value(&mut member, docs).await.as_deref(), Some("1"));
    assert_eq!(hits(&proxy), before + 1, "cached under its policy");
    let mut owner = wire(&proxy).await;
    simple_value(
        &mut owner,
        "DELETE FROM memberships WHERE member = 'member'",
    )
    .await;
    assert_eq!(simple_value(&mut member, docs).await.as_deref(), Some("0"));

    // A policy calling now() makes the result depend on the time: never cached.
    let news = "/* pgwarden:cache */ SELECT count(*) FROM news";
    let before = hits(&proxy);
    for _ in 0..2 {
        assert_eq!(simple_value(&mut member, news).await.as_deref(), Some("1"));
    }
    assert_eq!(hits(&proxy), before, "now() in a policy");
    let reasons = cache_reasons(&proxy);
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("row security policy calls non-IMMUTABLE now")),
        "{reasons:?}"
    );

    // current_setting in a policy reads the session's settings, which are in the key.
    let notes = "/* pgwarden:cache */ SELECT string_agg(body, ',') FROM notes";
    simple_value(&mut member, "SET app.tenant = 'a'").await;
    let mut other = within("member b", member_login()).await;
    simple_value(&mut other, "SET app.tenant = 'b'").await;
    for _ in 0..2 {
        assert_eq!(
            simple_value(&mut member, notes).await.as_deref(),
            Some("note of a")
        );
        assert_eq!(
            simple_value(&mut other, notes).await.as_deref(),
            Some("note of b")
        );
    }
}
