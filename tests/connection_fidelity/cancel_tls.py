"""Issue 10 item 1 (psycopg 3 with libpq 17): `conn.cancel_safe()` over TLS.

libpq 17's cancel API negotiates TLS for the cancel connection when the main connection
uses TLS, sends the CancelRequest and waits for the server to close the connection. A
TLS stream dropped without close_notify makes it raise "SSL error: unexpected eof while
reading"; PostgreSQL closes with close_notify."""
import asyncio
import os

import psycopg
from pgw import attempt, emit, main


async def select_one(conn):
    cursor = await conn.execute("select 1")
    return await cursor.fetchone()


async def run():
    conn = await psycopg.AsyncConnection.connect(
        os.environ["PGW_URL"] + "?sslmode=require", autocommit=True, connect_timeout=5
    )
    tls = conn.pgconn.ssl_in_use
    sleeping = asyncio.create_task(conn.execute("select pg_sleep(10)"))
    # Let the statement reach the server first.
    await asyncio.sleep(0.5)
    cancel = await attempt(conn.cancel_safe(timeout=8), "cancel_safe", timeout=10)
    cancelled = await attempt(sleeping, "the cancelled pg_sleep", timeout=10)
    after = await attempt(select_one(conn), "select 1 after the cancel")
    emit(tls=tls, cancel=cancel, cancelled=cancelled, after=after)


main(run)
