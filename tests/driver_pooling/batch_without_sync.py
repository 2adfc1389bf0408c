"""Issue 9 item 3 (libpq through psycopg.pq): a client sends two queries in pipeline mode
without Sync, the second failing (so the server waits for Sync), then closes its socket
(MODE=close) or goes silent (MODE=silent); the next client must still be served, and no
server backend may stay busy."""
import os
import socket
import time

import psycopg
from psycopg import pq
from pgw import attempt_sync, emit, main

URL, DIRECT, MODE = os.environ["PGW_URL"], os.environ["DIRECT_URL"], os.environ["MODE"]
BUSY = """select state, query from pg_stat_activity
          where usename = 'pgwarden' and pid <> pg_backend_pid() and state <> 'idle'"""


def open_batch():
    conn = pq.PGconn.connect(f"{URL}?connect_timeout=5".encode())
    assert conn.status == pq.ConnStatus.OK, conn.error_message
    conn.enter_pipeline_mode()
    conn.send_query_params(b"select 1", None)
    conn.send_query_params(b"select 1 / 0", None)
    assert conn.flush() == 0
    return conn


def select_one_as_new_client():
    with psycopg.connect(URL, autocommit=True, connect_timeout=5) as conn:
        return conn.execute("select 1").fetchone()


def closed_by_proxy(conn):
    """Reads the silent client's socket until it closes (3 s at most)."""
    sock = socket.socket(fileno=os.dup(conn.socket))
    sock.settimeout(3)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except socket.timeout:
        return {"closed": False, "told_25P03": b"C25P03\0" in data}
    except ConnectionResetError:
        pass
    return {"closed": True, "told_25P03": b"C25P03\0" in data}


def run():
    silent = open_batch()
    time.sleep(0.5)  # the proxy has forwarded the batch by now
    if MODE == "close":
        socket.socket(fileno=os.dup(silent.socket)).shutdown(socket.SHUT_RDWR)
    new_client = attempt_sync(select_one_as_new_client, "a new client's select 1", timeout=4)
    busy = attempt_sync(
        lambda: psycopg.connect(DIRECT, connect_timeout=5).execute(BUSY).fetchall(),
        "pg_stat_activity",
    )
    if MODE == "close":
        emit(new_client=new_client, busy=busy)
    else:
        emit(new_client=new_client, busy=busy, silent_client=closed_by_proxy(silent))


main(run)
