"""Issue 9 item 1 (asyncpg): a statement that fails at Parse must not wedge the client."""
import os

import asyncpg
from pgw import attempt, emit, main

URL, DIRECT = os.environ["PGW_URL"], os.environ["DIRECT_URL"]
BUSY = """select state, query from pg_stat_activity
          where usename = 'pgwarden' and pid <> pg_backend_pid() and state <> 'idle'"""


async def select_one_as_another_client():
    other = await asyncpg.connect(URL, timeout=5)
    try:
        return await other.fetchval("select 1")
    finally:
        other.terminate()


async def run():
    conn = await asyncpg.connect(URL, timeout=5)
    too_deep = await attempt(
        conn.fetchval("SELECT '{{{{{{{1}}}}}}}'::int[]"), "the 7-dimension array"
    )
    after = await attempt(conn.fetchval("select 1"), "select 1 after the Parse error")
    other = await attempt(
        select_one_as_another_client(), "another client's select 1", timeout=8
    )
    direct = await asyncpg.connect(DIRECT, timeout=5)
    busy = await attempt(direct.fetch(BUSY), "pg_stat_activity")
    emit(too_deep=too_deep, after=after, other=other, busy=busy)


main(run)
