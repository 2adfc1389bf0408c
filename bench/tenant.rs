//! The `tenant` script: tenant-scoped selects as an application under the tenant
//! guard would send them, for comparing pgwarden with the guard off and in rewrite
//! mode (`TARGETS="pgwarden pgwarden_rewrite" SCRIPTS=tenant`).
//!
//! `tenant_accounts` is `pgbench_accounts` spread over 10 tenants; the script reads
//! one account of tenant 1 joined to its (global, unscoped) branch. Every target
//! connects with `options=-c pgwarden.tenant_id=1` so they run the same work.

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

/// `PGOPTIONS` for every target of the script.
pub const PGOPTIONS: &str = "-c pgwarden.tenant_id=1";

/// Writes the pgbench script into `dir`.
pub fn script_file(dir: &Path) -> PathBuf {
    let path = dir.join("tenant.sql");
    std::fs::write(&path, SCRIPT).expect("write the tenant script");
    path
}
