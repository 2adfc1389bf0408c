"""Issue 10 item 2 (asyncpg): a timed-out statement's cancel never hits the next one.

On a timeout asyncpg sends a CancelRequest, waits until the cancel connection is closed
and the cancelled statement has ended, then sends its next statement. PostgreSQL closes
the cancel connection only after it signalled the backend, so the next statement is
safe; a proxy that closes it before the server has acted lets a late cancel kill the
next statement. Runs ROUNDS times against URL and counts what each step answered.
With FRESH=1 each round's sleep is a new statement (asyncpg prepares it again), so the
timeout always strikes while the statement is being prepared, not while it runs."""
import asyncio
import json
import os
from collections import Counter

import asyncpg
from pgw import attempt, emit, main

ROUNDS = int(os.environ["ROUNDS"])
NEXT = os.environ["NEXT"]
FRESH = os.environ.get("FRESH") == "1"


async def timed_out_sleep(conn, round):
    sql = f"SELECT pg_sleep(1) -- round {round}" if FRESH else "SELECT pg_sleep(1)"
    try:
        await conn.fetch(sql, timeout=1e-10)
        return "finished"
    except asyncio.TimeoutError:
        return "timeout"


async def run():
    conn = await asyncpg.connect(os.environ["URL"], timeout=5)
    sleeps, nexts = Counter(), Counter()
    for round in range(ROUNDS):
        sleep = await attempt(timed_out_sleep(conn, round), "timed-out sleep", 10)
        sleeps[json.dumps(sleep)] += 1
        nexts[json.dumps(await attempt(conn.fetchval(NEXT), "the next statement", 10))] += 1
    emit(sleeps=dict(sleeps), nexts=dict(nexts))


main(run)
