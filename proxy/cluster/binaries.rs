//! Finding PostgreSQL's server binaries without assuming PATH.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::ClusterError;

#[derive(Debug, Clone)]
pub struct PgBinaries {
    pub bindir: PathBuf,
}

impl PgBinaries {
    /// `PGWARDEN_PG_BINDIR`, then `pg_config --bindir` (if it holds initdb), then the
    /// newest `/usr/lib/postgresql/*/bin`.
    pub fn locate() -> Result<PgBinaries, ClusterError> {
        if let Some(dir) = std::env::var_os("PGWARDEN_PG_BINDIR") {
            let dir = PathBuf::from(dir);
            return if has_server(&dir) {
                Ok(PgBinaries { bindir: dir })
            } else {
                Err(ClusterError::BinariesMissing(format!(
                    "PGWARDEN_PG_BINDIR={} has no initdb",
                    dir.display()
                )))
            };
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && has_server(&dir) {
                return Ok(PgBinaries { bindir: dir });
            }
        }
        let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
                let bin = entry.path().join("bin");
                has_server(&bin).then_some((version, bin))
            })
            .collect();
        candidates.sort();
        candidates
            .pop()
            .map(|(_, bindir)| PgBinaries { bindir })
            .ok_or_else(|| {
                ClusterError::BinariesMissing(
                    "no initdb via PGWARDEN_PG_BINDIR, pg_config or /usr/lib/postgresql/*/bin"
                        .into(),
                )
            })
    }

    pub fn path(&self, tool: &str) -> PathBuf {
        let own = self.bindir.join(tool);
        if own.exists() {
            return own;
        }
        // Client tools may live elsewhere (e.g. /usr/bin/psql from postgresql-client).
        PathBuf::from("/usr/bin").join(tool)
    }
}

fn has_server(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()
}
