#!/usr/bin/env bash
# Builds pgwarden in release and runs the load harness (bench/harness.rs):
# pgbench direct vs PgBouncer vs pgwarden in one run, then idle-connection RSS.
# Knobs: DURATION CLIENTS MODES SCRIPTS SCALE TARGETS IDLE POOL_SIZE LATENCY_ROUNDS
# LATENCY_SECONDS CPU_ROUNDS CPU_SECONDS CPU_CLIENTS BULK (see harness.rs and README.md).
# The tenant guard's cost: SCRIPTS=tenant TARGETS="direct pgbouncer pgwarden pgwarden_rewrite".
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then
  echo "pgbouncer is missing: apt-get install -y pgbouncer (or TARGETS=\"direct pgwarden\")" >&2
fi
ulimit -n "$(ulimit -Hn)" || true
# Two builds: an example pulls in the dev-dependencies' features (tokio's process
# driver), which the proxy as users build it does not have.
cargo build --release --bin pgwarden
cargo build --release --example bench
exec target/release/examples/bench
