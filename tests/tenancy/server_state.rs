//! What is on the server, read directly: per-(table, tenant) checksums and a schema
//! fingerprint taken before and after each adversarial entry.

use super::*;

/// md5 of the rows of every (table, tenant); global tables under tenant "-".
pub(crate) type Snapshot = BTreeMap<(String, String), String>;

pub(crate) fn snapshot_sql() -> String {
    let scoped = SCOPED_TABLES.iter().map(|t| {
        format!(
            "SELECT '{t}', tenant_id::text, md5(string_agg(r::text, ',' ORDER BY r::text)) \
             FROM {t} r GROUP BY tenant_id"
        )
    });
    let global = GLOBAL_TABLES.iter().map(|t| {
        format!(
            "SELECT '{t}', '-', coalesce(md5(string_agg(r::text, ',' ORDER BY r::text)), '') \
             FROM {t} r"
        )
    });
    scoped.chain(global).collect::<Vec<_>>().join(" UNION ALL ")
}

pub(crate) async fn snapshot(direct: &Client) -> Result<Snapshot, Error> {
    let rows = direct.query(&snapshot_sql(), &[]).await?;
    Ok(rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect())
}

/// Relations, columns, functions, schemas, rules, policies, triggers and comments
/// outside the system schemas: changes when DDL got through.
pub(crate) const SCHEMA_FINGERPRINT: &str = "
SELECT md5(string_agg(x, ',' ORDER BY x)) FROM (
    SELECT format('rel %s %s %s %s', c.oid::regclass, c.relkind, c.relacl, c.relrowsecurity)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
    UNION ALL
    SELECT format('col %s.%s %s %s', a.attrelid::regclass, a.attname, a.atttypid::regtype, a.attnotnull)
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT format('fn %s %s', p.oid::regprocedure, md5(p.prosrc))
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
    UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname !~ '^pg_'
    UNION ALL SELECT 'rule ' || rulename FROM pg_rules WHERE schemaname !~ '^pg_'
    UNION ALL SELECT 'policy ' || policyname FROM pg_policies
    UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL SELECT 'comment ' || description FROM pg_description WHERE objoid >= 16384
) s (x)";

pub(crate) async fn schema_fingerprint(direct: &Client) -> String {
    direct
        .query_one(SCHEMA_FINGERPRINT, &[])
        .await
        .expect("schema fingerprint")
        .get(0)
}

/// (table, tenant) pairs whose rows differ between two snapshots.
pub(crate) fn changed(before: &Snapshot, after: &Snapshot) -> Vec<(String, String)> {
    let mut keys: Vec<_> = before.keys().chain(after.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    keys.retain(|k| before.get(k) != after.get(k));
    keys
}

pub(crate) fn state_problems(
    expect: Expect,
    before: &Snapshot,
    after: &Result<Snapshot, Error>,
) -> Vec<String> {
    let after = match after {
        Ok(after) => after,
        Err(e) => {
            return vec![format!(
                "the scoped tables cannot be read any more: {}",
                describe(e)
            )]
        }
    };
    let (own, others): (Vec<_>, Vec<_>) = changed(before, after)
        .into_iter()
        .partition(|(_, tenant)| *tenant == TENANT.to_string() || tenant == "-");
    let list = |changes: &[(String, String)]| {
        changes
            .iter()
            .map(|(table, tenant)| format!("{table} of tenant {tenant}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut problems = Vec::new();
    if !others.is_empty() {
        problems.push(format!("changed other tenants' rows: {}", list(&others)));
    }
    if expect == Expect::Reject && !own.is_empty() {
        problems.push(format!(
            "changed rows though it should have been rejected whole: {}",
            list(&own)
        ));
    }
    problems
}

/// Ends every server session but this one: pgwarden's pooled sessions included.
pub(crate) async fn end_server_sessions(direct: &Client) {
    const OTHERS: &str = "FROM pg_stat_activity WHERE datname = current_database() \
                          AND pid <> pg_backend_pid() AND backend_type = 'client backend'";
    direct
        .batch_execute(&format!("SELECT pg_terminate_backend(pid) {OTHERS}"))
        .await
        .expect("terminate server sessions");
    for _ in 0..250 {
        let left: i64 = direct
            .query_one(&format!("SELECT count(*) {OTHERS}"), &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("pgwarden's server sessions did not end");
}

/// Whether an entry that got through could have changed the identity of pgwarden's
/// pooled server session: `SET ROLE` and `SET SESSION AUTHORIZATION` outlive the
/// client (`RESET ALL` does not undo them) and would run later entries as another
/// role.
pub(crate) fn may_change_identity(entry: &Adversarial) -> bool {
    let sql = entry.sql.to_ascii_lowercase();
    sql.contains("role") || sql.contains("authorization")
}
