"""Issue 9 item 4 (asyncpg): a setting changed through the extended protocol (`fetch` is
Parse/Bind/Execute) follows its client and never reaches another client. MODE=set uses
SET, MODE=set_config uses set_config(..., false). With HOLD=1 a third client holds a
server connection in a transaction during each of A's rounds, so that A is served by
another connection than the one it changed the setting on."""
import os

import asyncpg
from pgw import attempt, emit, main

URL = os.environ["PGW_URL"]
CHANGE = {
    "set": "set statement_timeout = '200ms'",
    "set_config": "select set_config('statement_timeout', '200ms', false)",
}[os.environ["MODE"]]
HOLD = os.environ.get("HOLD") == "1"
SHOW = "show statement_timeout"


async def run():
    a = await asyncpg.connect(URL, timeout=5)
    b = await asyncpg.connect(URL, timeout=5)
    holder = await asyncpg.connect(URL, timeout=5) if HOLD else None
    changed = await attempt(a.fetch(CHANGE), "A's change through fetch")
    rounds = []
    for _ in range(3):
        step = {}
        if HOLD:
            step["hold"] = await attempt(holder.execute("begin; select 1"), "holder's BEGIN")
        step["a_show"] = await attempt(a.fetchval(SHOW), "A's SHOW")
        step["a_sleep"] = await attempt(a.fetch("select pg_sleep(2)"), "A's pg_sleep(2)")
        if HOLD:
            step["release"] = await attempt(holder.execute("commit"), "holder's COMMIT")
        step["b_show"] = await attempt(b.fetchval(SHOW), "B's SHOW")
        rounds.append(step)
    a_left = await attempt(a.close(timeout=5), "A's close")
    b_after = [await attempt(b.fetchval(SHOW), "B's SHOW after A left") for _ in range(3)]
    emit(changed=changed, rounds=rounds, a_left=a_left, b_after=b_after)


main(run)
