//! The running targets of one bench run, by name (`direct`, `pgbouncer`, `pgwarden`,
//! `pgwarden_nostats`, ...): their ports, and the processes whose CPU time and RSS
//! are measured. The proxies are started here and stopped when this is dropped.

use std::path::{Path, PathBuf};

use pgwarden::cluster::{free_port, LocalCluster};

use super::protection;
use super::proxies::{
    pgwarden_command, server_pid, start_pgbouncer, start_pgwarden, start_pgwarden_binary,
    start_pgwarden_per_core, wait_ready, Guard, Pgwarden,
};

/// The proxies of the run's `TARGETS`, started (a target not listed keeps its port and
/// has no process), and the port of every target.
pub struct RunningTargets {
    // Fields drop in the order written: the last target started is stopped first.
    baseline: Option<Guard>,
    per_core: Vec<Guard>,
    nofair: Option<Guard>,
    rewrite: Option<Guard>,
    nocache: Option<Guard>,
    nostats: Option<Guard>,
    warden: Option<Guard>,
    bouncer: Option<Guard>,
    ports: Ports,
}

/// The port of every target, listed in `TARGETS` or not.
struct Ports {
    direct: u16,
    bouncer: u16,
    warden: u16,
    nostats: u16,
    nocache: u16,
    rewrite: u16,
    nofair: u16,
    per_core: u16,
    baseline: u16,
}

impl RunningTargets {
    /// Starts the proxies among `targets` in front of `cluster`'s primary, with
    /// `pool_size` server connections each (PgBouncer keeps its files in `work`), and
    /// waits until every target accepts connections.
    pub fn start(targets: &[String], cluster: &LocalCluster, work: &Path, pool_size: u64) -> Self {
        let listed = |name: &str| targets.iter().any(|t| t == name);
        let pg_port = cluster.primary().port;
        let bouncer_port = free_port();
        let bouncer = listed("pgbouncer")
            .then(|| start_pgbouncer(work, pg_port, bouncer_port, pool_size, "scram-sha-256"));
        // pgwarden, and the same proxy with one setting changed, each on a port of its own.
        let variant = |name: &str, port: u16, change: fn(Pgwarden) -> Pgwarden| {
            listed(name).then(|| start_pgwarden(cluster, &change(Pgwarden::scram(port, pool_size))))
        };
        let warden_port = free_port();
        let warden = variant("pgwarden", warden_port, |p| p);
        // Query statistics off, to measure what they cost.
        let nostats_port = free_port();
        let nostats = variant("pgwarden_nostats", nostats_port, |p| Pgwarden {
            stats: false,
            ..p
        });
        // The result cache off.
        let nocache_port = free_port();
        let nocache = variant("pgwarden_nocache", nocache_port, |p| Pgwarden {
            tenancy: "off:nocache",
            ..p
        });
        // The tenant guard rewriting every statement.
        let rewrite_port = free_port();
        let rewrite = variant("pgwarden_rewrite", rewrite_port, |p| Pgwarden {
            tenancy: "rewrite",
            ..p
        });

        // The same proxy with fairness off (no fair gate at all): the cost of fairness.
        let nofair_port = free_port();
        let nofair = listed("pgwarden_nofair")
            .then(|| Guard(protection::start_nofair(cluster, nofair_port, pool_size)));

        // One single-threaded pgwarden per core on one port (`proxy.worker_threads = 1`).
        let per_core_port = free_port();
        let per_core: Vec<Guard> = if listed("pgwarden_per_core") {
            start_pgwarden_per_core(cluster, &Pgwarden::scram(per_core_port, pool_size))
        } else {
            Vec::new()
        };

        // Another pgwarden build (BASELINE_BIN, e.g. main before a change) in the same run.
        let baseline_port = free_port();
        let baseline = listed("pgwarden_baseline").then(|| {
            let bin = std::env::var("BASELINE_BIN")
                .expect("the pgwarden_baseline target needs BASELINE_BIN=/path/to/pgwarden");
            let mut command = pgwarden_command(PathBuf::from(bin));
            if let Ok(preload) = std::env::var("BASELINE_PRELOAD") {
                command.env("LD_PRELOAD", preload);
            }
            start_pgwarden_binary(command, cluster, &Pgwarden::scram(baseline_port, pool_size))
        });

        let running = RunningTargets {
            baseline,
            per_core,
            nofair,
            rewrite,
            nocache,
            nostats,
            warden,
            bouncer,
            ports: Ports {
                direct: pg_port,
                bouncer: bouncer_port,
                warden: warden_port,
                nostats: nostats_port,
                nocache: nocache_port,
                rewrite: rewrite_port,
                nofair: nofair_port,
                per_core: per_core_port,
                baseline: baseline_port,
            },
        };
        for target in targets {
            wait_ready(running.port(target), target);
        }
        running
    }

    /// Where `target` takes connections (an unknown name: pgwarden's port).
    pub fn port(&self, target: &str) -> u16 {
        let ports = &self.ports;
        match target {
            "direct" => ports.direct,
            "pgbouncer" => ports.bouncer,
            "pgwarden_baseline" => ports.baseline,
            "pgwarden_nostats" => ports.nostats,
            "pgwarden_rewrite" => ports.rewrite,
            "pgwarden_nofair" => ports.nofair,
            "pgwarden_nocache" => ports.nocache,
            "pgwarden_per_core" => ports.per_core,
            _ => ports.warden,
        }
    }

    /// pgwarden processes by target, for RSS after every phase.
    pub fn pid(&self, target: &str) -> Option<u32> {
        let guard = match target {
            "pgwarden" => self.warden.as_ref(),
            "pgwarden_nostats" => self.nostats.as_ref(),
            "pgwarden_rewrite" => self.rewrite.as_ref(),
            "pgwarden_nocache" => self.nocache.as_ref(),
            "pgwarden_baseline" => self.baseline.as_ref(),
            "pgwarden_nofair" => self.nofair.as_ref(),
            _ => None,
        };
        guard.map(|g| g.0.id())
    }

    /// The processes whose CPU time a target costs: the proxy (pgbouncer's worker under
    /// runuser; every process of the per-core layout).
    pub fn cpu_pids(&self, target: &str) -> Vec<u32> {
        match target {
            "pgbouncer" => self.bouncer.iter().map(|g| server_pid(g.0.id())).collect(),
            "pgwarden_per_core" => self.per_core.iter().map(|g| g.0.id()).collect(),
            _ => self.pid(target).into_iter().collect(),
        }
    }
}
