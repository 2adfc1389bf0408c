#!/usr/bin/env bash
# Instructions per transaction, counted by callgrind: the proxy's own work per
# `pgbench -S` transaction, a figure the noise of a shared 2-core VM cannot move (CPU
# time per transaction swings by 30% between identical runs there; this by 1 to 4%).
# It counts user-space instructions only: the kernel's share (the socket calls) is
# what `bench/cpu.rs` sees on top.
#
# Method: the proxy runs under `valgrind --tool=callgrind`; after 200 warm-up
# transactions per client, pgbench runs SHORT transactions per client in one run and
# LONG in another; the difference of the two totals, divided by the difference in
# transactions, leaves out start-up and shutdown.
#
# Needs valgrind and pgbench, and a PostgreSQL with pgbench tables (`pgbench -i`) at
# PRIMARY_HOST:PRIMARY_PORT, user postgres, trust.
#
# usage: bench/instructions.sh [MODE ...]         (default: simple extended)
# env:   BIN            pgwarden binary (default target/release/pgwarden)
#        PRIMARY_HOST   (127.0.0.1)   PRIMARY_PORT (5432)   DATABASE (postgres)
#        CLIENTS (4)    SHORT (500)   LONG (2500)          PORT (56501: the proxy's)
#        PGBOUNCER_INI  a PgBouncer config (trust, transaction mode) listening on
#                       PGBOUNCER_PORT: counted the same way, for the ratio
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/pgwarden}
PRIMARY_HOST=${PRIMARY_HOST:-127.0.0.1}
PRIMARY_PORT=${PRIMARY_PORT:-5432}
DATABASE=${DATABASE:-postgres}
CLIENTS=${CLIENTS:-4}
SHORT=${SHORT:-500}
LONG=${LONG:-2500}
PORT=${PORT:-56501}
MODES=("$@")
[ ${#MODES[@]} -eq 0 ] && MODES=(simple extended)
work=$(mktemp -d)
chmod 777 "$work"
trap 'pkill -f "callgrind-out-file=$work" 2>/dev/null || true; rm -rf "$work"' EXIT

wait_port() {
  for _ in $(seq 120); do
    pg_isready -q -h 127.0.0.1 -p "$1" && return 0
    sleep 0.5
  done
  echo "nothing answers on port $1" >&2
  return 1
}

# total_instructions NAME MODE TXNS PORT COMMAND...: the callgrind total of one run.
total_instructions() {
  local name=$1 mode=$2 txns=$3 port=$4
  shift 4
  local out="$work/$name-$mode-$txns.out"
  "$@" --callgrind-out-file="$out" >"$work/$name.log" 2>&1 &
  local pid=$!
  wait_port "$port"
  pgbench -n -S -M "$mode" -h 127.0.0.1 -p "$port" -U postgres -c "$CLIENTS" -j 1 -t 200 "$DATABASE" >/dev/null 2>&1
  pgbench -n -S -M "$mode" -h 127.0.0.1 -p "$port" -U postgres -c "$CLIENTS" -j 1 -t "$txns" "$DATABASE" >"$work/pgbench.log" 2>&1
  grep -q "processed: $((txns * CLIENTS))/" "$work/pgbench.log" || { cat "$work/pgbench.log" >&2; return 1; }
  pkill -INT -f "callgrind-out-file=$out" || true
  wait "$pid" 2>/dev/null || true
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

per_transaction() {
  local name=$1 mode=$2 port=$3
  shift 3
  local short long
  short=$(total_instructions "$name" "$mode" "$SHORT" "$port" "$@")
  long=$(total_instructions "$name" "$mode" "$LONG" "$port" "$@")
  echo $(((long - short) / ((LONG - SHORT) * CLIENTS)))
}

pgwarden() {
  env PGWARDEN_LISTEN="127.0.0.1:$PORT" PGWARDEN_HTTP_LISTEN="127.0.0.1:$((PORT + 100))" \
    PGWARDEN_PRIMARY_URL="postgres://postgres@$PRIMARY_HOST:$PRIMARY_PORT/$DATABASE" \
    PGWARDEN_POOL_SIZE=20 PGWARDEN_AUTH_METHOD=trust \
    valgrind --tool=callgrind "$@" "$BIN"
}

pgbouncer_cg() {
  local as=()
  [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
  "${as[@]}" valgrind --tool=callgrind "$@" pgbouncer "$PGBOUNCER_INI"
}

echo "| mode | pgwarden instructions per transaction | PgBouncer | ratio |"
echo "|---|---|---|---|"
for mode in "${MODES[@]}"; do
  ours=$(per_transaction pgwarden "$mode" "$PORT" pgwarden)
  if [ -n "${PGBOUNCER_INI:-}" ]; then
    theirs=$(per_transaction pgbouncer "$mode" "$PGBOUNCER_PORT" pgbouncer_cg)
    echo "| $mode | $ours | $theirs | $(awk "BEGIN {printf \"%.2f\", $ours / $theirs}") |"
  else
    echo "| $mode | $ours | | |"
  fi
done
