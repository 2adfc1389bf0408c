"""Issue 9 item 9 (asyncpg): after ALTER TABLE changes a column's type, asyncpg's own
re-prepare (on "cached plan must not change result type") must succeed."""
import os

import asyncpg
from pgw import attempt, emit, main


async def run():
    direct = await asyncpg.connect(os.environ["DIRECT_URL"], timeout=5)
    await direct.execute("create table t (x int); insert into t values (1)", timeout=5)
    conn = await asyncpg.connect(os.environ["PGW_URL"], timeout=5)
    before = [await attempt(conn.fetch("select * from t"), "select before") for _ in range(2)]
    await direct.execute("alter table t alter column x type text", timeout=5)
    after = await attempt(conn.fetch("select * from t"), "select after ALTER TABLE")
    emit(before=before, after=after)


main(run)
