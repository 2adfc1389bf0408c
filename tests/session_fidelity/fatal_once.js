// Issue 10 item 6 (node-postgres): after the server's FATAL (pg_terminate_backend of the
// client's own backend, named by the pid the client was given), the client sees that
// one error, not a second one made by the proxy. Then (issue 14) whether the client can
// go on: directly and in session pooling the connection has ended; under transaction
// pooling the client's connection is to pgwarden, which tells it the error once, at its
// next query, and serves it on.
const { Client } = require("pg");
const { attempt, emit, main } = require("./pgw.js");

main(async () => {
  const victim = new Client({ connectionString: process.env.TARGET_URL, connectionTimeoutMillis: 5000 });
  const killer = new Client({ connectionString: process.env.DIRECT_URL, connectionTimeoutMillis: 5000 });
  const errors = [];
  victim.on("error", (e) => errors.push(e.code || String(e)));
  await attempt(victim.connect(), "victim connect");
  await attempt(killer.connect(), "killer connect");
  // Inside a transaction so that transaction pooling keeps the server attached.
  await attempt(victim.query("BEGIN"), "BEGIN");
  const pid = (await attempt(victim.query("select pg_backend_pid() as pid"), "pid")).ok;
  const backend = pid && pid.rows[0].pid;
  // Listen for the end before the kill: the connection may end before the killer's
  // own answer arrives.
  const endSeen = new Promise((resolve) => victim.on("end", () => resolve("ended")));
  const terminated = await attempt(
    killer.query("select pg_terminate_backend($1) as done", [backend]),
    "pg_terminate_backend",
  );
  const ended = await attempt(endSeen, "connection end", 3000);
  // Give a second error (if any) time to arrive before counting.
  await new Promise((resolve) => setTimeout(resolve, 300));
  const next = await attempt(victim.query("select 1 as one"), "next query");
  const after = await attempt(victim.query("select 2 as two"), "query after");
  await killer.end();
  emit({
    terminated: terminated.ok && terminated.ok.rows[0].done,
    ended: ended.ok === "ended",
    errors,
    next: next.error || (next.ok ? "ok" : "hung"),
    after: after.error || (after.ok ? "ok" : "hung"),
  });
});
