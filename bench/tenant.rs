//! The tenant scripts: tenant-scoped selects as an application under the tenant
//! guard would send them, for comparing pgwarden with the guard off and in rewrite
//! mode (`TARGETS="pgwarden pgwarden_rewrite" SCRIPTS="tenant tenant_unscoped"`).
//!
//! `tenant_accounts` is `pgbench_accounts` spread over 10 tenants; the scripts read
//! one account of tenant 1 joined to its (global, unscoped) branch. `tenant` writes
//! the tenant predicate itself (as an app under `enforce` would; rewrite mode runs it
//! as written), `tenant_unscoped` leaves it to the guard (rewrite mode adds it; the
//! accounts read all belong to tenant 1, so every target returns the same rows).
//! Every target connects with `options=-c pgwarden.tenant_id=1` so they run the same
//! work.

use std::path::{Path, PathBuf};

pub const SETUP_SQL: &str = "
DROP TABLE IF EXISTS tenant_accounts;
CREATE TABLE tenant_accounts AS
    SELECT aid, 1 + aid % 10 AS tenant_id, bid, abalance FROM pgbench_accounts;
ALTER TABLE tenant_accounts ADD PRIMARY KEY (aid);
CREATE INDEX ON tenant_accounts (tenant_id, aid);
ANALYZE tenant_accounts;";

const SCRIPT: &str = "\\set n random(1, 10000 * :scale)
\\set aid :n * 10
SELECT a.abalance, b.bbalance FROM tenant_accounts a JOIN pgbench_branches b ON b.bid = a.bid WHERE a.aid = :aid AND a.tenant_id = 1;
";

/// `tenant_unscoped`: the same read without the tenant predicate.
const UNSCOPED: &str = "\\set n random(1, 10000 * :scale)
\\set aid :n * 10
SELECT a.abalance, b.bbalance FROM tenant_accounts a JOIN pgbench_branches b ON b.bid = a.bid WHERE a.aid = :aid;
";

/// `tenant_rewritten`: the text the guard sends for `UNSCOPED`, sent by pgbench itself,
/// to tell PostgreSQL's share of the cost (`direct`) from pgwarden's.
const REWRITTEN: &str = "\\set n random(1, 10000 * :scale)
\\set aid :n * 10
SELECT a.abalance, b.bbalance FROM tenant_accounts a JOIN pgbench_branches b ON b.bid = a.bid WHERE a.aid = :aid AND a.\"tenant_id\" = 1
";

/// `PGOPTIONS` for every target of the script.
pub const PGOPTIONS: &str = "-c pgwarden.tenant_id=1";

/// Whether `script` is one of these scripts.
pub fn is_tenant_script(script: &str) -> bool {
    matches!(script, "tenant" | "tenant_unscoped" | "tenant_rewritten")
}

/// Writes the pgbench script into `dir`.
pub fn script_file(dir: &Path, script: &str) -> PathBuf {
    let path = dir.join(format!("{script}.sql"));
    let text = match script {
        "tenant" => SCRIPT,
        "tenant_unscoped" => UNSCOPED,
        _ => REWRITTEN,
    };
    std::fs::write(&path, text).expect("write the tenant script");
    path
}

/// The guard's own share of rewrite mode's cost on `tenant_unscoped`. Rewrite mode
/// sends PostgreSQL a longer statement (the added tenant predicate), which PostgreSQL
/// runs more slowly whoever sends it: `direct` on `tenant_rewritten` against `direct`
/// on `tenant_unscoped` measures that part. The rest is pgwarden's: (rewrite ÷ off) ÷
/// (direct rewritten ÷ direct unscoped). Empty unless the run has all four cells.
pub fn guard_share_table(
    targets: &[String],
    rows: &[(String, String, String, Vec<super::pgbench::Measure>)],
) -> String {
    use std::fmt::Write as _;
    let idx = |name: &str| targets.iter().position(|t| t == name);
    let (Some(direct), Some(off), Some(rewrite)) =
        (idx("direct"), idx("pgwarden"), idx("pgwarden_rewrite"))
    else {
        return String::new();
    };
    let mut out = String::new();
    for (script, mode, clients, unscoped) in rows {
        if script != "tenant_unscoped" {
            continue;
        }
        let Some((_, _, _, rewritten)) = rows
            .iter()
            .find(|(s, m, c, _)| s == "tenant_rewritten" && m == mode && c == clients)
        else {
            continue;
        };
        let cells = [
            &unscoped[direct],
            &unscoped[off],
            &unscoped[rewrite],
            &rewritten[direct],
        ];
        if cells.iter().any(|m| m.failed || m.tps == 0.0) {
            continue;
        }
        if out.is_empty() {
            out.push_str("\n| mode | clients | rewrite ÷ off (`tenant_unscoped`) | PostgreSQL's part: direct `tenant_rewritten` ÷ direct `tenant_unscoped` | the guard's own: first ÷ second |\n|---|---|---|---|---|\n");
        }
        let proxy = unscoped[rewrite].tps / unscoped[off].tps;
        let server = rewritten[direct].tps / unscoped[direct].tps;
        let _ = writeln!(
            out,
            "| {mode} | {clients} | {proxy:.2} | {server:.2} | {:.2} |",
            proxy / server
        );
    }
    out
}
