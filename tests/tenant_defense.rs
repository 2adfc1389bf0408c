//! The tenant guard around the edges: row-level security as a second wall
//! (`tenancy.set_config`), roles mapped to tenants, bypass roles whose DDL refreshes
//! the guard's catalog, and violations visible in `SHOW TENANCY`, `/api/tenancy`
//! and `/metrics`. Changing the tenant (pipelined, prepared) is
//! `tenant_defense/tenant_changes.rs`.

use crate::support;

use std::time::{Duration, Instant};

use pgwarden::config::{Config, TenancyMode, UserConfig};
use pgwarden::RunningProxy;
use support::proxy::{self, DATABASE, PASSWORD, USER};
use support::within;
use tokio_postgres::{Client, SimpleQueryMessage};

#[path = "tenant_defense/tenant_changes.rs"]
mod tenant_changes;

const APP_USER: &str = "app_rls";
const APP_PASSWORD: &str = "rls-secret";

const SCHEMA: &str = "
CREATE TABLE orders (id bigint PRIMARY KEY, tenant_id bigint NOT NULL, note text);
INSERT INTO orders SELECT g, 1 + g % 3, 'order ' || g FROM generate_series(1, 30) g;
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON orders
    USING (tenant_id = current_setting('app.tenant_id')::bigint)
    WITH CHECK (tenant_id = current_setting('app.tenant_id')::bigint);
CREATE ROLE app_rls LOGIN PASSWORD 'rls-secret';
GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO app_rls;
";

fn add_app_user(config: &mut Config) {
    config.auth.users.push(UserConfig {
        name: APP_USER.into(),
        password: Some(APP_PASSWORD.into()),
        server_password: None,
    });
}

fn app_url(proxy: &RunningProxy, options: &str) -> String {
    format!(
        "postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{}/{DATABASE}?options={}",
        proxy.port(),
        options.replace(' ', "%20").replace('=', "%3D")
    )
}

/// Text of the first column of every row.
async fn column(client: &Client, sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .simple_query(sql)
        .await?
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .collect())
}

fn code(error: &tokio_postgres::Error) -> String {
    error
        .code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_is_a_second_wall() {
    let cluster = support::cluster(0);
    let direct = proxy::connect_direct(&cluster).await;
    direct.batch_execute(SCHEMA).await.unwrap();
    // Audit mode lets every statement through unchanged: only RLS limits the rows.
    let proxy = proxy::start(&cluster, |c| {
        add_app_user(c);
        c.tenancy.mode = TenancyMode::Audit;
        c.tenancy.set_config = Some("app.tenant_id".into());
    })
    .await;
    // A client trying to set the RLS setting itself at startup is overruled.
    let client = proxy::connect_url(&app_url(
        &proxy,
        "-c pgwarden.tenant_id=1 -c app.tenant_id=2",
    ))
    .await
    .unwrap();
    let tenants = column(&client, "SELECT DISTINCT tenant_id FROM orders")
        .await
        .unwrap();
    assert_eq!(tenants, vec!["1"]);

    // Many transactions over the pool: the setting follows each client's tenant.
    let other = proxy::connect_url(&app_url(&proxy, "-c pgwarden.tenant_id=2"))
        .await
        .unwrap();
    for _ in 0..20 {
        let a = column(&client, "SELECT DISTINCT tenant_id FROM orders")
            .await
            .unwrap();
        let b = column(&other, "SELECT DISTINCT tenant_id FROM orders")
            .await
            .unwrap();
        assert_eq!((a, b), (vec!["1".to_string()], vec!["2".to_string()]));
    }
    client
        .simple_query("SET pgwarden.tenant_id = '3'")
        .await
        .unwrap();
    let tenants = column(&client, "SELECT DISTINCT tenant_id FROM orders")
        .await
        .unwrap();
    assert_eq!(tenants, vec!["3"]);

    // Writing another tenant's row is stopped by the policy's WITH CHECK.
    let error = client
        .simple_query("INSERT INTO orders VALUES (100, 1, 'sneaky')")
        .await
        .unwrap_err();
    assert_eq!(code(&error), "42501", "{error}");

    // The setting itself is out of the client's reach, even in audit mode.
    for sql in [
        "SET app.tenant_id = '1'",
        "SELECT set_config('app.tenant_id', '1', false)",
        "RESET app.tenant_id",
    ] {
        let error = client.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&error), "42501", "{sql}: {error}");
    }
    // No tenant: the setting is unset and the policy fails closed in PostgreSQL.
    client
        .simple_query("RESET pgwarden.tenant_id")
        .await
        .unwrap();
    assert!(column(&client, "SELECT count(*) FROM orders")
        .await
        .is_err());
    let direct_count = column(&direct, "SELECT count(*) FROM orders")
        .await
        .unwrap();
    assert_eq!(direct_count, vec!["30"], "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violations_show_up_in_the_console_api_and_metrics() {
    let cluster = support::cluster(0);
    let direct = proxy::connect_direct(&cluster).await;
    direct.batch_execute(SCHEMA).await.unwrap();
    let proxy = proxy::start(&cluster, |c| c.tenancy.mode = TenancyMode::Enforce).await;
    let tenant = proxy::connect_url(&format!(
        "{}?options=-c%20pgwarden.tenant_id%3D7",
        proxy::url(&proxy)
    ))
    .await
    .unwrap();
    for _ in 0..3 {
        let error = tenant
            .simple_query("SELECT * FROM orders")
            .await
            .unwrap_err();
        assert_eq!(code(&error), "42501");
    }
    let pinned = column(&tenant, "SELECT count(*) FROM orders WHERE tenant_id = 7").await;
    assert_eq!(pinned.unwrap(), vec!["0"]);

    let admin = proxy::connect_url(&format!(
        "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/pgwarden",
        proxy.port()
    ))
    .await
    .unwrap();
    let rows: Vec<Vec<String>> = admin
        .simple_query("SHOW TENANCY")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    // database, tenant, action, kind, count, fingerprint, last_reason
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0][..5],
        [DATABASE, "7", "rejected", "missing_tenant_predicate", "3"],
        "{rows:?}"
    );
    assert!(
        rows[0][5].to_lowercase().contains("from orders"),
        "{rows:?}"
    );

    let tables = column(&admin, "SHOW TENANCY TABLES").await.unwrap();
    assert_eq!(tables, vec![DATABASE.to_string()]);

    let (status, body) = support::http::get(proxy.http_address, "/api/tenancy", None).await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["violations"][0]["count"], 3, "{json}");
    assert_eq!(json["tables"][0]["relation"], "public.orders", "{json}");
    let (_, metrics) = support::http::get(proxy.http_address, "/metrics", None).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pgwarden_tenant_violations_total")
                && l.contains("missing_tenant_predicate")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_map_to_tenants_and_bypass_ddl_refreshes_the_catalog() {
    let cluster = support::cluster(0);
    let direct = proxy::connect_direct(&cluster).await;
    direct.batch_execute(SCHEMA).await.unwrap();
    direct
        .batch_execute("ALTER TABLE orders DISABLE ROW LEVEL SECURITY; GRANT CREATE ON SCHEMA public TO app_rls")
        .await
        .unwrap();
    let proxy = proxy::start(&cluster, |c| {
        add_app_user(c);
        c.tenancy.mode = TenancyMode::Rewrite;
        c.tenancy.bypass_roles = vec![USER.into()];
        c.tenancy.roles.insert(APP_USER.into(), "2".into());
    })
    .await;
    let app = proxy::connect_url(&app_url(&proxy, "-c pgwarden.tenant_id=1"))
        .await
        .unwrap();
    // The role's tenant wins over the startup option, and cannot be changed.
    let tenants = column(&app, "SELECT DISTINCT tenant_id FROM orders")
        .await
        .unwrap();
    assert_eq!(tenants, vec!["2"]);
    let error = app
        .simple_query("SET pgwarden.tenant_id = '1'")
        .await
        .unwrap_err();
    assert_eq!(code(&error), "42501", "{error}");
    // Tenant sessions may not run DDL.
    let error = app
        .simple_query("CREATE TABLE mine (id int)")
        .await
        .unwrap_err();
    assert_eq!(code(&error), "42501", "{error}");

    // A bypass role (migrations) sees everything and creates a new scoped table.
    let admin = proxy::connect(&proxy).await;
    let all = column(&admin, "SELECT count(DISTINCT tenant_id) FROM orders").await;
    assert_eq!(all.unwrap(), vec!["3"]);
    admin
        .batch_execute(
            "CREATE TABLE notes (id int PRIMARY KEY, tenant_id bigint NOT NULL, body text);
             INSERT INTO notes VALUES (1, 1, 'one'), (2, 2, 'two'), (3, 3, 'three');
             GRANT SELECT ON notes TO app_rls",
        )
        .await
        .unwrap();
    // The DDL went through pgwarden, so the catalog reloads: the new table is scoped.
    let deadline = Instant::now() + Duration::from_secs(10);
    let bodies = loop {
        match column(&app, "SELECT body FROM notes ORDER BY id").await {
            Ok(rows) => break rows,
            Err(e) if code(&e) == "42501" && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("notes never became usable: {e}"),
        }
    };
    assert_eq!(bodies, vec!["two"]);
}

/// Waits until the guard has finished a catalog load that started after this call.
async fn catalog_loaded_again(proxy: &RunningProxy) {
    let handle = proxy
        .runtime
        .tenancy()
        .catalog_handle(DATABASE)
        .expect("the database is guarded")
        .clone();
    within("a catalog load", handle.refreshed(Duration::from_secs(20)))
        .await
        .expect("the catalog loads again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_finds_the_same_catalog_keeps_the_guards_shapes() {
    let cluster = support::cluster(0);
    let direct = proxy::connect_direct(&cluster).await;
    within("schema", direct.batch_execute(SCHEMA))
        .await
        .unwrap();
    let proxy = proxy::start(&cluster, |c| {
        c.tenancy.mode = TenancyMode::Rewrite;
        c.tenancy.refresh_interval_ms = 100;
    })
    .await;
    let url = format!("{}?options=-c%20pgwarden.tenant_id%3D1", proxy::url(&proxy));
    let client = within("connect", proxy::connect_url(&url)).await.unwrap();
    // Orders 3, 6 and 9 are tenant 1's.
    let note = |id: u32| format!("SELECT note FROM orders WHERE id = {id}");
    let guard = || proxy.runtime.tenancy();
    assert_eq!(
        within("first", column(&client, &note(3))).await.unwrap(),
        vec!["order 3"]
    );
    let (_, learned, _) = guard().shape_counts();
    assert_eq!(learned, 1, "the first text of the shape is judged");
    // Periodic loads (every 100 ms) find the same catalog: the shape stays known.
    for _ in 0..3 {
        catalog_loaded_again(&proxy).await;
    }
    assert_eq!(
        within("same shape", column(&client, &note(6)))
            .await
            .unwrap(),
        vec!["order 6"]
    );
    let (hits, misses, _) = guard().shape_counts();
    assert_eq!((hits, misses), (1, 1), "served by the shape judged before");
    // A catalog that changed empties the caches: the shape is judged again, and the
    // session's memo of shapes does not answer for it.
    within(
        "ddl",
        direct.batch_execute("CREATE TABLE audit_notes (id int, tenant_id bigint)"),
    )
    .await
    .unwrap();
    catalog_loaded_again(&proxy).await;
    let memo_before = guard().shape_memo_hits();
    assert_eq!(
        within("after ddl", column(&client, &note(9)))
            .await
            .unwrap(),
        vec!["order 9"]
    );
    let (_, misses, _) = guard().shape_counts();
    assert_eq!(misses, 2, "judged again after the catalog changed");
    assert_eq!(guard().shape_memo_hits(), memo_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_inside_a_transaction_aborts_it_like_postgres_would() {
    let cluster = support::cluster(0);
    let direct = proxy::connect_direct(&cluster).await;
    direct.batch_execute(SCHEMA).await.unwrap();
    direct
        .batch_execute("ALTER TABLE orders DISABLE ROW LEVEL SECURITY")
        .await
        .unwrap();
    let proxy = proxy::start(&cluster, |c| c.tenancy.mode = TenancyMode::Rewrite).await;
    let mut client = proxy::connect_url(&format!(
        "{}?options=-c%20pgwarden.tenant_id%3D1",
        proxy::url(&proxy)
    ))
    .await
    .unwrap();

    // Simple protocol: the refused statement fails the transaction; COMMIT rolls back.
    client.simple_query("BEGIN").await.unwrap();
    client
        .simple_query("INSERT INTO orders (id, note) VALUES (500, 'kept?')")
        .await
        .unwrap();
    let refused = client
        .simple_query("SELECT query_to_xml('select * from orders', true, true, '')")
        .await
        .unwrap_err();
    assert_eq!(code(&refused), "42501", "{refused}");
    let aborted = client.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(code(&aborted), "25P02", "{aborted}");
    client.simple_query("COMMIT").await.unwrap();

    // Extended protocol: a parameter naming another tenant is refused at Bind.
    let transaction = client.transaction().await.unwrap();
    transaction
        .execute(
            "INSERT INTO orders (id, note) VALUES ($1, 'kept?')",
            &[&501i64],
        )
        .await
        .unwrap();
    let refused = transaction
        .execute(
            "INSERT INTO orders (id, tenant_id, note) VALUES ($1, $2, 'x')",
            &[&502i64, &2i64],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&refused), "42501", "{refused}");
    let aborted = transaction.execute("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(code(&aborted), "25P02", "{aborted}");
    // PostgreSQL answers COMMIT of a failed transaction with ROLLBACK.
    transaction.commit().await.unwrap();

    let left = column(&direct, "SELECT count(*) FROM orders WHERE id >= 500").await;
    assert_eq!(
        left.unwrap(),
        vec!["0"],
        "nothing of either transaction committed"
    );
    // The session goes on normally.
    let own = column(&client, "SELECT count(*) FROM orders")
        .await
        .unwrap();
    assert_eq!(own, vec!["10"]);
}

/// Two string literals to the guard, which lexes `'\'` as PostgreSQL does with
/// `standard_conforming_strings = on`; with it off, the server reads one literal and
/// then a `UNION` over every tenant's notes.
const SPLIT_LITERAL: &str = r"SELECT '\', ' UNION SELECT body FROM notes --'";

const STRINGS_SCHEMA: &str = "
CREATE TABLE notes (id int PRIMARY KEY, tenant_id bigint NOT NULL, body text);
INSERT INTO notes VALUES (1, 1, 'note of tenant 1'), (2, 2, 'secret of tenant 2');
CREATE ROLE app_rls LOGIN PASSWORD 'rls-secret';
GRANT SELECT ON notes TO app_rls;
CREATE FUNCTION strings_off() RETURNS text LANGUAGE sql
    AS $$ SELECT set_config('standard_conforming_strings', 'off', false) $$;
";

/// What `SPLIT_LITERAL` returned, or the SQLSTATE it failed with.
async fn split_literal(client: &Client) -> Result<Vec<String>, String> {
    let messages = within(
        "split literal",
        client.simple_query(&format!("{SPLIT_LITERAL} ")),
    )
    .await
    .map_err(|e| code(&e))?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join(" | "),
            ),
            _ => None,
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_sessions_never_run_where_strings_are_read_differently() {
    let cluster = support::cluster(0);
    let direct = proxy::connect_direct(&cluster).await;
    within("schema", direct.batch_execute(STRINGS_SCHEMA))
        .await
        .unwrap();
    let proxy = proxy::start(&cluster, |c| {
        add_app_user(c);
        c.tenancy.mode = TenancyMode::Rewrite;
        c.tenancy.safe_functions = vec!["strings_off".into()];
        c.pool.size = 1;
    })
    .await;
    let connect = || async {
        within(
            "connect",
            proxy::connect_url(&app_url(&proxy, "-c pgwarden.tenant_id=1")),
        )
        .await
        .unwrap()
    };

    // As PostgreSQL reads it by default: two literals, nothing else.
    let app = connect().await;
    let literals = vec![r"\ |  UNION SELECT body FROM notes --".to_string()];
    assert_eq!(split_literal(&app).await, Ok(literals.clone()));

    // Turned off inside a transaction by a function the guard was told is safe: the
    // server says so, and the next statement on that connection is refused.
    within("begin", app.simple_query("BEGIN")).await.unwrap();
    within("strings_off", app.simple_query("SELECT strings_off()"))
        .await
        .unwrap();
    assert_eq!(split_literal(&app).await, Err("42501".to_string()));
    within("rollback", app.simple_query("ROLLBACK"))
        .await
        .unwrap();
    assert_eq!(split_literal(&app).await, Ok(literals.clone()));

    // Turned off for good on the one pooled connection: the next client gets its own
    // settings back, not the ones a function changed behind the proxy.
    within("strings_off", app.simple_query("SELECT strings_off()"))
        .await
        .unwrap();
    let other = connect().await;
    let shown = within("show", column(&other, "SHOW standard_conforming_strings"))
        .await
        .unwrap();
    assert_eq!(shown, vec!["on"]);
    assert_eq!(split_literal(&other).await, Ok(literals.clone()));

    // Off as the role's default: every new server connection starts that way, and
    // guarded statements are refused in both protocols instead of leaking.
    within(
        "alter role",
        direct.batch_execute("ALTER ROLE app_rls SET standard_conforming_strings = off"),
    )
    .await
    .unwrap();
    drop((app, other));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let client = connect().await;
        let shown = within("show", column(&client, "SHOW standard_conforming_strings"))
            .await
            .unwrap();
        if shown == vec!["off"] {
            assert_eq!(split_literal(&client).await, Err("42501".to_string()));
            let error = within("extended", client.query(SPLIT_LITERAL, &[]))
                .await
                .unwrap_err();
            assert_eq!(code(&error), "42501", "{error}");
            // Without a backslash, both settings read a text alike: it runs, guarded.
            let notes = within("plain read", column(&client, "SELECT body FROM notes"))
                .await
                .unwrap();
            assert_eq!(notes, vec!["note of tenant 1"]);
            break;
        }
        // The pooled connection still has the old default until it is replaced.
        assert!(
            Instant::now() < deadline,
            "no server connection with the role's new default"
        );
        within(
            "terminate",
            direct.simple_query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app_rls'",
            ),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
