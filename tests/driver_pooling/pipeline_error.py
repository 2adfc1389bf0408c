"""Issue 9 item 2 (psycopg 3): an error inside a pipeline, then rollback, then a query.

PostgreSQL sends an ErrorResponse at once, before the pipeline's Sync; the pause makes
the client send its Sync only after the error reached it, as happens by chance under
load, so the test does not depend on timing."""
import os
import time

import psycopg
from pgw import attempt_sync, emit, main


def run():
    conn = psycopg.connect(os.environ["PGW_URL"], autocommit=True, connect_timeout=5)

    def failing_pipeline():
        with conn.pipeline():
            conn.execute("select 1 / %s", [0])
            time.sleep(0.3)

    failed = attempt_sync(failing_pipeline, "the pipeline dividing by zero")
    rollback = attempt_sync(conn.rollback, "rollback")
    select = attempt_sync(
        lambda: conn.execute("select 1").fetchone(), "select 1 after the rollback"
    )
    emit(pipeline=failed, rollback=rollback, select=select)


main(run)
