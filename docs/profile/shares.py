#!/usr/bin/env python3
"""Shares of a folded-stacks file (fold.py) by group, each sample counted once, in the
first group (top to bottom) whose pattern matches any frame of its stack, and the
leaf functions with the most samples.

usage: shares.py < stacks.folded
"""
import re
import sys
from collections import Counter

GROUPS = [
    ("allocation (malloc/free/realloc)", re.compile(r"^(__libc_malloc|malloc|_int_malloc|_int_free|free|cfree|__libc_free|realloc|_int_realloc|__libc_realloc|malloc_consolidate|alloc::alloc|__rust_alloc|__rust_dealloc|__rdl_)")),
    ("syscalls and kernel network stack", re.compile(r"(entry_SYSCALL|do_syscall_64|\[kernel|^__x64_sys|^tcp_|^__libc_(send|recv|write|read)|epoll_wait)")),
    ("statement scanner / classifier / routing", re.compile(r"^pgwarden::(sql|route|scan)::")),
    ("statistics", re.compile(r"^pgwarden::(stats::|server::statistics::)")),
    ("result cache bookkeeping", re.compile(r"^pgwarden::(cache::|server::caching::|server::cache_writes::)")),
    ("pool checkout/return (bb8, fair gate)", re.compile(r"^(bb8::|pgwarden::pool::)")),
    ("frame handling (client/server messages, pump)", re.compile(r"^pgwarden::server::(client_messages|server_messages|responses|pump|pooled_state|statements|session_effects|settings|routing|protection|tenancy)")),
    ("tokio scheduling, timers, wakeups", re.compile(r"^tokio::(runtime::(scheduler|task|context|time|park|driver)|time::|sync::)")),
    ("tokio I/O driver", re.compile(r"^tokio::(runtime::io|io::|net::)|^mio::")),
]

# Leaf-first attribution: the leaf's own group if it has one, else the first caller's.
def group_of(frames):
    for f in reversed(frames):
        for name, pat in GROUPS:
            if pat.search(f):
                return name
    return "other"


def main():
    totals, leaves, total = Counter(), Counter(), 0
    for line in sys.stdin:
        stack, _, n = line.rstrip("\n").rpartition(" ")
        n = int(n)
        frames = stack.split(";")[1:]
        total += n
        totals[group_of(frames)] += n
        if frames:
            leaves[frames[-1]] += n
    print(f"{total} samples\n\n| group (by the nearest frame that belongs to one) | share |\n|---|---|")
    for name, n in totals.most_common():
        print(f"| {name} | {100.0 * n / total:.1f}% |")
    print("\n| top leaf functions | share |\n|---|---|")
    for name, n in leaves.most_common(25):
        print(f"| `{name[:110]}` | {100.0 * n / total:.1f}% |")


if __name__ == "__main__":
    main()
