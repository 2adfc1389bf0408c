"""A session the proxy ends itself (here: the idle-client timeout) over TLS: the client
reads the proxy's FATAL and a clean TLS close, not an SSL error."""
import os
import time

import psycopg
from pgw import attempt_sync, emit, main


def run():
    conn = psycopg.connect(
        os.environ["PGW_URL"] + "?sslmode=require", autocommit=True, connect_timeout=5
    )
    tls = conn.pgconn.ssl_in_use
    time.sleep(1.0)  # past proxy.idle_client_timeout_ms
    after = attempt_sync(lambda: conn.execute("select 1").fetchone(), "select 1")
    message = conn.pgconn.error_message.decode(errors="replace")
    emit(
        tls=tls,
        after=after,
        told_why="idle" in message,
        eof_without_close_notify="unexpected eof" in message,
        message=message,
    )


main(run)
