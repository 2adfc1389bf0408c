"""Issue 9 item 10 (libpq through psycopg.pq): the unnamed prepared statement stays usable
after Sync, also when the client lands on another server connection meanwhile."""
import os

import psycopg
from psycopg import pq
from pgw import attempt_sync, emit, main

URL = os.environ["PGW_URL"]


def summary(result):
    out = {"status": pq.ExecStatus(result.status).name}
    if result.status == pq.ExecStatus.FATAL_ERROR:
        out["sqlstate"] = result.error_field(pq.DiagnosticField.SQLSTATE).decode()
    elif result.status == pq.ExecStatus.TUPLES_OK:
        out["value"] = result.get_value(0, 0).decode()
    else:
        out["nparams"] = result.nparams
    return out


def run():
    conn = pq.PGconn.connect(f"{URL}?connect_timeout=5".encode())
    assert conn.status == pq.ConnStatus.OK, conn.error_message
    out = {}
    out["prepare"] = attempt_sync(
        lambda: summary(conn.prepare(b"", b"select $1::int + 1")), "PQprepare"
    )
    out["describe"] = attempt_sync(
        lambda: summary(conn.describe_prepared(b"")), "PQdescribePrepared"
    )
    # Another client holds a server connection in a transaction meanwhile.
    other = psycopg.connect(URL, connect_timeout=5)
    out["other_busy"] = attempt_sync(
        lambda: other.execute("select 1").fetchone(), "the other client's select"
    )
    out["describe_again"] = attempt_sync(
        lambda: summary(conn.describe_prepared(b"")), "PQdescribePrepared again"
    )
    out["execute"] = attempt_sync(
        lambda: summary(conn.exec_prepared(b"", [b"41"])), "PQexecPrepared"
    )
    emit(**out)


main(run)
