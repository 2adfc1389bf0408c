"""Issue 10 items 3-5 (asyncpg): ParameterStatus values, application_name and the
backend pid the client is given, as PostgreSQL gives them."""
import asyncio
import os

import asyncpg
from pgw import attempt, emit, main

URL, MODE = os.environ["TARGET_URL"], os.environ["MODE"]


async def run():
    conn = await asyncpg.connect(
        URL,
        timeout=5,
        server_settings={"DateStyle": "iso, dmy", "TimeZone": "utc", "IntervalStyle": "iso_8601"},
    )
    s = conn.get_settings()
    told = {
        "client_encoding": s.client_encoding,
        "DateStyle": s.DateStyle,
        "TimeZone": s.TimeZone,
        "IntervalStyle": s.IntervalStyle,
    }
    application_name = await attempt(conn.fetchval("show application_name"), "SHOW")
    # After a SET of a reported parameter the client is told the server's spelling.
    await attempt(conn.execute("SET DateStyle = 'sql, mdy'"), "SET DateStyle")
    told_after_set = conn.get_settings().DateStyle
    backend = await attempt(conn.fetchval("select pg_backend_pid()"), "pg_backend_pid")
    received = asyncio.Queue()
    await conn.add_listener("told", lambda c, pid, ch, payload: received.put_nowait(pid))
    await attempt(conn.execute("NOTIFY told, 'x'"), "NOTIFY")
    notify_pid = await attempt(received.get(), "own notification", timeout=3)
    emit(
        told=told,
        told_after_set=told_after_set,
        application_name=application_name,
        pid_is_backend=backend.get("ok") == conn.get_server_pid(),
        notify_pid_is_known=notify_pid.get("ok") == conn.get_server_pid(),
    )


main(run)
