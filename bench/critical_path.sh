#!/usr/bin/env bash
# The proxy's own share of one client's latency: the time from a read's return to the
# next write's start, per direction (client -> server and server -> client), with one
# pgbench client (`-S`, MODE simple or extended). Traced with perf's system-call
# tracepoints, so it shows what the proxy does between the bytes arriving and the
# bytes leaving (user space plus the non-blocking calls in between), without the
# scheduler's wake-up delays that make one client's latency scatter by tens of
# microseconds from round to round on a shared VM.
#
# Needs perf (with the raw_syscalls tracepoints), pgbench and python3, and a proxy
# already running (any: pgwarden, PgBouncer) in front of a database with pgbench tables.
#
# usage: bench/critical_path.sh PORT PID [MODE] [SECONDS]
#   PORT     the proxy's client port        PID   the proxy's process id
#   MODE     simple (default) or extended   SECONDS traced (2; pgbench runs 2 more)
# env:   PGUSER (postgres)  PGDATABASE (postgres)  PGHOST (127.0.0.1)
set -euo pipefail
PORT=$1
PID=$2
MODE=${3:-simple}
SECONDS_TRACED=${4:-2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

pgbench -n -S -M "$MODE" -c 1 -T $((SECONDS_TRACED + 2)) -h "${PGHOST:-127.0.0.1}" \
  -p "$PORT" -U "${PGUSER:-postgres}" "${PGDATABASE:-postgres}" >"$work/pgbench.log" 2>&1 &
bench=$!
sleep 1
# Which descriptor is the client (its local port is PORT)?
client_fd=$(python3 - "$PID" "$PORT" <<'PY'
import os, sys
pid, port = sys.argv[1], int(sys.argv[2])
# Established sockets (state 01) by inode, with their local port.
local = {}
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        for row in open(table).readlines()[1:]:
            f = row.split()
            if f[3] == "01":
                local[f[9]] = int(f[1].rsplit(":", 1)[1], 16)
    except OSError:
        pass
for fd in os.listdir(f"/proc/{pid}/fd"):
    target = os.readlink(f"/proc/{pid}/fd/{fd}")
    if target.startswith("socket:[") and local.get(target[8:-1]) == port:
        print(fd)
        break
PY
)
timeout "$SECONDS_TRACED" perf record -q -e raw_syscalls:sys_enter,raw_syscalls:sys_exit \
  -p "$PID" -o "$work/trace.data" >/dev/null 2>&1 || true
wait "$bench" || { cat "$work/pgbench.log" >&2; exit 1; }
export CLIENT_FD=${client_fd:--1}
perf script --ns -i "$work/trace.data" 2>/dev/null | python3 -c '
import re, statistics, sys
# recvfrom (45) returning bytes, then the next sendto (44): the pair of descriptors
# names the direction. One client: one client socket, one server socket.
line_re = re.compile(r"\s(\d+\.\d+):\s+raw_syscalls:sys_(enter|exit):\s+NR (\d+)(?: \(([0-9a-f]+),)?(?: = (-?\d+))?")
entered, read, gaps = None, None, {}
for line in sys.stdin:
    m = line_re.search(line)
    if not m:
        continue
    at, kind, nr = float(m.group(1)) * 1e6, m.group(2), int(m.group(3))
    if kind == "enter":
        entered = (nr, int(m.group(4), 16) if m.group(4) else None)
        if nr == 44 and read is not None:
            gaps.setdefault((read[1], entered[1]), []).append(at - read[0])
            read = None
    elif nr == 45 and entered and entered[0] == 45 and int(m.group(5) or 0) > 0:
        read = (at, entered[1])
import os
client = int(os.environ["CLIENT_FD"])
pairs = sorted(gaps.items(), key=lambda kv: -len(kv[1]))[:2]
for (source, target), us in pairs:
    direction = "?"
    if source == client:
        direction = "client -> server"
    elif target == client:
        direction = "server -> client"
    print(f"{direction} (read fd {source}, write fd {target}): {len(us)} times, median {statistics.median(us):.2f} us, mean {statistics.mean(us):.2f} us")
if not pairs:
    sys.exit("no read followed by a write was traced: is PID the proxy, and perf allowed to trace it?")
'
