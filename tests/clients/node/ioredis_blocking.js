// ioredis through shardproxy: a BLPOP woken by another connection's push, a BLPOP that
// times out, BLMOVE, and the connection usable afterwards.
// Usage: node ioredis_blocking.js PORT; prints one JSON line of results, exits 1 on error.
"use strict";
const Redis = require("ioredis");

async function main() {
  const port = Number(process.argv[2]);
  const c = new Redis({ host: "127.0.0.1", port, lazyConnect: true });
  const other = new Redis({ host: "127.0.0.1", port, lazyConnect: true });
  await c.connect();
  await other.connect();
  await c.del("{io}q", "{io}src", "{io}dst");
  const out = {};
  const waiting = c.blpop("{io}q", 5);
  setTimeout(() => other.rpush("{io}q", "job"), 200);
  out.blpop = await waiting;
  out.timeout = await c.blpop("{io}q", 0.2);
  await other.rpush("{io}src", "m");
  out.blmove = await c.blmove("{io}src", "{io}dst", "LEFT", "RIGHT", 1);
  out.after = await c.ping();
  console.log(JSON.stringify(out));
  c.disconnect();
  other.disconnect();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
