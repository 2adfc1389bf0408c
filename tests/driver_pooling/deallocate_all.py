"""Issue 9 item 8 (asyncpg): DEALLOCATE ALL through the extended protocol, then the same
statement prepared again (what pgjdbc does) must run."""
import asyncio
import os

import asyncpg
from pgw import attempt, emit, main

QUERY = "select $1::int + 1"


async def run():
    conn = await asyncpg.connect(os.environ["PGW_URL"], timeout=5)
    first = await asyncio.wait_for(conn.prepare(QUERY), 5)
    before = await attempt(first.fetchval(1), "the statement before DEALLOCATE ALL")
    deallocated = await attempt(conn.fetch("DEALLOCATE ALL"), "DEALLOCATE ALL")

    async def prepare_again():
        again = await conn.prepare(QUERY)
        return await again.fetchval(41)

    again = await attempt(prepare_again(), "the same statement prepared again")
    emit(before=before, deallocated=deallocated, again=again)


main(run)
