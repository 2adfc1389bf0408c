//! 4b. Half-open clients: two psql in a network namespace of their own, inside
//!     transactions, whose link then goes down (no FIN, no RST ever arrives: what a
//!     crashed host or a dropped NAT entry looks like). One is idle with everything
//!     acknowledged: TCP keepalive (`proxy.tcp_keepalive_*`) must reap it. The other's
//!     answer is sent after the cut and never acknowledged, where keepalive does not
//!     probe: `proxy.tcp_user_timeout_ms` must reap it. Their client slots are freed and
//!     their server connections closed, so PostgreSQL rolls both transactions back.
//!     Needs root (network namespaces and a veth pair); without it the test says why
//!     and passes.

use crate::support::command::{OutputWithin, SHORT_RUN};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgwarden::config::AuthMethod;

use crate::load::{self, Outcomes, STEP};
use crate::support;
use crate::support::proxy::{self, DATABASE, USER};

/// A network namespace joined to this one by a veth pair; deleted on drop (which
/// deletes the pair), with the client running in it.
struct Namespace {
    name: String,
    inner_device: String,
    outer_device: String,
    clients: Vec<Child>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .try_output_within(SHORT_RUN)
        .map_err(|e| format!("ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Namespace {
    /// The namespace and the /30 subnet between them: (namespace, proxy-side address).
    fn create() -> Result<(Namespace, String), String> {
        let id = std::process::id() % 100_000;
        let net = std::process::id() % 250;
        let name = format!("pgwarden-ho-{id}");
        let (outer, inner) = (format!("pgw{id}o"), format!("pgw{id}i"));
        ip(&["netns", "add", &name])?;
        let ns = Namespace {
            name: name.clone(),
            inner_device: inner.clone(),
            outer_device: outer.clone(),
            clients: Vec::new(),
        };
        let (outer_addr, inner_addr) = (format!("10.213.{net}.1"), format!("10.213.{net}.2"));
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ])?;
        ip(&["link", "set", &inner, "netns", &name])?;
        ip(&["addr", "add", &format!("{outer_addr}/30"), "dev", &outer])?;
        ip(&["link", "set", &outer, "up"])?;
        ip(&[
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{inner_addr}/30"),
            "dev",
            &inner,
        ])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", &inner, "up"])?;
        Ok((ns, outer_addr))
    }

    /// Starts psql in the namespace with `input` on its stdin, which stays open (psql
    /// then waits for more, keeping its session).
    fn psql(&mut self, address: &str, port: &str, input: &str) {
        let mut client = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(support::psql_path())
            .args(["-X", "-q", "-h", address, "-p", port, "-U", USER, DATABASE])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("psql in the namespace");
        client
            .stdin
            .as_mut()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        self.clients.push(client);
    }

    /// Cuts the link: from now on packets in both directions are lost.
    fn cut(&self) {
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "link",
            "set",
            &self.inner_device,
            "down",
        ])
        .expect("link down");
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        for client in &mut self.clients {
            let _ = client.kill();
            let _ = client.wait();
        }
        // Deleting one end deletes the pair at once; the namespace itself lingers in
        // the kernel while the killed client's orphaned socket retries its FIN.
        let _ = ip(&["link", "del", &self.outer_device]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Polls until a backend of the proxy's user matches `condition`.
async fn wait_for(direct: &tokio_postgres::Client, condition: &str) {
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND {condition}");
    let started = Instant::now();
    loop {
        let n: i64 = tokio::time::timeout(STEP, direct.query_one(&sql, &[&USER]))
            .await
            .unwrap()
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(started.elapsed() < STEP, "no backend with {condition}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The TCP timers of the proxy's accepted sockets (`keepalive` or `on`: retransmitting).
fn socket_timers(port: &str) -> Vec<String> {
    let output = Command::new("ss")
        .args(["-tno", &format!("( sport = :{port} )")])
        .try_output_within(SHORT_RUN)
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    output
        .split_whitespace()
        .filter(|w| w.starts_with("timer:"))
        .map(str::to_string)
        .collect()
}

/// Backends of the proxy's user idle inside a transaction.
async fn idle_in_transaction(direct: &tokio_postgres::Client) -> i64 {
    tokio::time::timeout(
        STEP,
        direct.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state = 'idle in transaction'",
            &[&USER],
        ),
    )
    .await
    .unwrap()
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_clients_are_reaped_by_keepalive_and_user_timeout() {
    let (mut ns, address) = match Namespace::create() {
        Ok(created) => created,
        Err(reason) => {
            println!("half-open client: skipped, no network namespace here ({reason})");
            return;
        }
    };
    let cluster = support::cluster(0);
    let direct = proxy::connect_direct(&cluster).await;
    direct
        .batch_execute("CREATE TABLE half_open (n int)")
        .await
        .unwrap();
    let (idle, interval, count, user_timeout_ms) = (2u64, 1u64, 2u32, 3_000u64);
    let proxy = proxy::start(&cluster, |c| {
        // The namespace reaches it on the veth address, the test on 127.0.0.1.
        c.proxy.listen = "0.0.0.0:0".into();
        c.auth.method = AuthMethod::Trust;
        c.proxy.tcp_keepalive_idle_secs = idle;
        c.proxy.tcp_keepalive_interval_secs = interval;
        c.proxy.tcp_keepalive_count = count;
        c.proxy.tcp_user_timeout_ms = user_timeout_ms;
    })
    .await;
    let port = proxy.port().to_string();
    ns.psql(
        &address,
        &port,
        "BEGIN;\nINSERT INTO half_open VALUES (1);\n",
    );
    wait_for(&direct, "state = 'idle in transaction'").await;
    ns.psql(
        &address,
        &port,
        "BEGIN;\nINSERT INTO half_open VALUES (2);\nSELECT pg_sleep(1.5);\n",
    );
    wait_for(
        &direct,
        "state = 'active' AND query LIKE 'SELECT pg_sleep%'",
    )
    .await;
    // The idle one has acknowledged everything by now (delayed ACKs take 40 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = load::settled_connections(&proxy, &direct).await;
    let clients_before = proxy.runtime.client_count();

    ns.cut();
    let cut_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let timers = socket_timers(&port);
    let limit =
        Duration::from_secs(idle + interval * u64::from(count) + user_timeout_ms / 1000 + 20);
    loop {
        let (open, clients) = (
            idle_in_transaction(&direct).await,
            proxy.runtime.client_count(),
        );
        if open == 0 && clients == 0 {
            break;
        }
        if cut_at.elapsed() > limit {
            panic!(
                "the half-open clients were not reaped within {limit:?}: {open} idle in transaction, {clients} clients; timers {:?}",
                socket_timers(&port)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reaped_after = cut_at.elapsed();
    let rows: i64 = direct
        .query_one("SELECT count(*) FROM half_open", &[])
        .await
        .unwrap()
        .get(0);
    let after = load::settled_connections(&proxy, &direct).await;
    let mut outcomes = Outcomes::default();
    for n in 1..=2 {
        outcomes.add(if n <= 2 - rows {
            "rolled back"
        } else {
            "committed?!"
        });
    }
    println!(
        "half-open clients: faults injected: the link of 2 psql inside transactions cut (no FIN/RST), one idle, one answered after the cut; keepalive {idle}s + {interval}s x {count}, tcp_user_timeout_ms {user_timeout_ms}; \
         queries run: 5; proxy socket timers 2 s after the cut {timers:?}; both reaped after {reaped_after:?}; their transactions {:?}; clients {clients_before} -> {}; \
         server connections before: proxy {} pg_stat_activity {}; after: proxy {} pg_stat_activity {}",
        outcomes.0,
        proxy.runtime.client_count(),
        before.0,
        before.1,
        after.0,
        after.1,
    );
    assert_eq!(rows, 0, "a half-open client's transaction was committed");
    assert_eq!(after.0, after.1, "server connections disagree");
}
