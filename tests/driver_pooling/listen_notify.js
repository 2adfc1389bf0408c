// Issue 9 item 7 (node-postgres): LISTEN through transaction pooling; NOTIFY from another
// client through the proxy reaches the listener.
const { Client } = require("pg");
const { attempt, emit, main } = require("./pgw.js");

main(async () => {
  const options = { connectionString: process.env.PGW_URL, connectionTimeoutMillis: 5000 };
  const listener = new Client(options);
  const sender = new Client(options);
  const received = [];
  listener.on("notification", (n) => received.push(`${n.channel}:${n.payload}`));
  const steps = [
    await attempt(listener.connect().then(() => "connected"), "listener connect"),
    await attempt(sender.connect().then(() => "connected"), "sender connect"),
    await attempt(listener.query("LISTEN jobs").then((r) => r.command), "LISTEN"),
  ];
  for (let i = 0; i < 3; i++) {
    steps.push(await attempt(sender.query(`NOTIFY jobs, 'job-${i}'`).then((r) => r.command), "NOTIFY"));
    steps.push(await attempt(listener.query("select 1 as one").then((r) => r.rows), "listener select"));
  }
  const waited = await attempt(
    new Promise((resolve) => {
      const poll = setInterval(() => received.length >= 3 && (clearInterval(poll), resolve("done")), 20);
    }),
    "three notifications",
    3000,
  );
  emit({ steps, waited, received });
});
