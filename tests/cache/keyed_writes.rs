//! Keyed writes against real PostgreSQL: an `UPDATE`/`DELETE` confined to one key
//! invalidates only that row's entries (simple protocol, later texts of the same shape,
//! extended with text and binary parameters, an unnamed text parsed again), while reads
//! keyed on another column, moving a row, triggers that write other rows and cascading
//! foreign keys make the write table-wide.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_writes_invalidate_only_their_rows() {
    /// Runs each read twice on a fresh connection: a fill, then a hit.
    async fn warm(proxy: &RunningProxy, sqls: Vec<String>) {
        let mut c = wire(proxy).await;
        for sql in &sqls {
            simple_value(&mut c, sql).await;
            simple_value(&mut c, sql).await;
        }
    }
    fn by_id(id: u32) -> String {
        format!("/* pgwarden:cache */ SELECT v FROM acc WHERE id = {id}")
    }
    /// Row 2 reads `value` afresh, row 1 (value 11) is still a hit.
    async fn only_row_2_was_invalidated(proxy: &RunningProxy, c: &mut Wire, value: &str) {
        let before = hits(proxy);
        assert_eq!(simple_value(c, &by_id(2)).await.as_deref(), Some(value));
        assert_eq!(simple_value(c, &by_id(1)).await.as_deref(), Some("11"));
        assert_eq!(hits(proxy), before + 1, "only id = 1 was a hit");
    }
    let cluster = cluster(0, &[]);
    setup(
        &cluster,
        "CREATE TABLE acc (id int primary key, grp int, v int);
         INSERT INTO acc SELECT g, g % 2, g * 10 FROM generate_series(1, 4) g;
         CREATE TABLE parent (id bigint primary key);
         CREATE TABLE child (id int primary key, parent_id bigint REFERENCES parent (id) ON DELETE CASCADE);
         INSERT INTO parent VALUES (1), (2); INSERT INTO child VALUES (1, 1), (2, 2);
         CREATE TABLE trig (id int primary key, v int); INSERT INTO trig VALUES (1, 1), (2, 2);
         CREATE FUNCTION bump_others() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN IF pg_trigger_depth() = 1 THEN UPDATE trig SET v = v + 100 WHERE id <> NEW.id; END IF;
           RETURN NEW; END $$;
         CREATE TRIGGER bump AFTER UPDATE ON trig FOR EACH ROW EXECUTE FUNCTION bump_others();",
    )
    .await;
    let proxy = start(&cluster, |_| {}).await;
    let mut c = wire(&proxy).await;
    let by_grp = "/* pgwarden:cache */ SELECT sum(v) FROM acc WHERE grp = 0";
    let total = "/* pgwarden:cache */ SELECT sum(v) FROM acc";
    warm(
        &proxy,
        vec![by_id(1), by_id(2), by_grp.into(), total.into()],
    )
    .await;

    // A write confined to id = 1 keeps id = 2 cached; reads keyed on another column,
    // or not keyed, are stale after it.
    simple_value(&mut c, "UPDATE acc SET v = 11 WHERE id = 1").await;
    let before = hits(&proxy);
    assert_eq!(simple_value(&mut c, &by_id(1)).await.as_deref(), Some("11"));
    assert_eq!(hits(&proxy), before, "id = 1 was invalidated");
    assert_eq!(simple_value(&mut c, &by_id(2)).await.as_deref(), Some("20"));
    assert_eq!(hits(&proxy), before + 1, "id = 2 stayed cached");
    assert_eq!(simple_value(&mut c, by_grp).await.as_deref(), Some("60"));
    assert_eq!(simple_value(&mut c, total).await.as_deref(), Some("101"));
    assert_eq!(hits(&proxy), before + 1, "grp and total were invalidated");

    // Later texts of that shape get their names from the shape: still only their row.
    for value in ["25", "20"] {
        warm(&proxy, vec![by_id(1), by_id(2)]).await;
        simple_value(&mut c, &format!("UPDATE acc SET v = {value} WHERE id = 2")).await;
        only_row_2_was_invalidated(&proxy, &mut c, value).await;
    }

    // A keyed write through the extended protocol, its key a text parameter, then a
    // binary int4 parameter.
    warm(&proxy, vec![by_id(1), by_id(2)]).await;
    for (param, binary, value) in [
        (b"2".to_vec(), false, "21"),
        (2i32.to_be_bytes().to_vec(), true, "22"),
    ] {
        let frames = within(
            "keyed update",
            c.extended(
                "",
                Some("UPDATE acc SET v = v + 1 WHERE id = $1"),
                &[Some(&param)],
                binary,
                0,
            ),
        )
        .await;
        assert!(frames.iter().all(|f| f[0] != b'E'));
        only_row_2_was_invalidated(&proxy, &mut c, value).await;
    }
    // The same unnamed text again after another one: its effects are the session's
    // remembered ones, and still its row's.
    warm(&proxy, vec![by_id(1), by_id(2)]).await;
    for (sql, param) in [
        ("SELECT v FROM acc WHERE id = $1", b"1"),
        ("UPDATE acc SET v = v + 1 WHERE id = $1", b"2"),
    ] {
        let frames = within(
            "unnamed",
            c.extended("", Some(sql), &[Some(param)], false, 0),
        )
        .await;
        assert!(frames.iter().all(|f| f[0] != b'E'));
    }
    only_row_2_was_invalidated(&proxy, &mut c, "23").await;

    // Moving a row to another key is table-wide.
    warm(&proxy, vec![by_id(1), by_id(4)]).await;
    simple_value(&mut c, "UPDATE acc SET id = 1004 WHERE id = 4").await;
    assert_eq!(simple_value(&mut c, &by_id(4)).await, None);
    assert_eq!(simple_value(&mut c, &by_id(1)).await.as_deref(), Some("11"));

    // A trigger that writes other rows makes its table's writes table-wide.
    let trig = |id: u32| format!("/* pgwarden:cache */ SELECT v FROM trig WHERE id = {id}");
    warm(&proxy, vec![trig(2)]).await;
    simple_value(&mut c, "UPDATE trig SET v = 5 WHERE id = 1").await;
    assert_eq!(simple_value(&mut c, &trig(2)).await.as_deref(), Some("102"));

    // A cascading foreign key writes the referencing table.
    let child = "/* pgwarden:cache */ SELECT parent_id FROM child WHERE id = 1";
    warm(&proxy, vec![child.into()]).await;
    simple_value(&mut c, "DELETE FROM parent WHERE id = 1").await;
    assert_eq!(simple_value(&mut c, child).await, None, "cascaded delete");
}
