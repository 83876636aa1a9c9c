// ioredis through shardproxy: multi() on tagged keys, a WATCH conflict, eval and evalsha.
// Usage: node ioredis_transactions.js PORT KEY_ON_ONE_SHARD KEY_ON_ANOTHER; prints one JSON line of results, exits 1 on error.
"use strict";
const Redis = require("ioredis");

async function main() {
  const port = Number(process.argv[2]);
  const c = new Redis({ host: "127.0.0.1", port, lazyConnect: true, maxRetriesPerRequest: 1 });
  const other = new Redis({ host: "127.0.0.1", port, lazyConnect: true, maxRetriesPerRequest: 1 });
  await c.connect();
  await other.connect();
  const out = {};
  await c.del("{job7}.state", "{job7}.log");
  out.multi = await c
    .multi()
    .set("{job7}.state", "queued")
    .incr("{job7}.tries")
    .rpush("{job7}.log", "a", "b")
    .lrange("{job7}.log", 0, -1)
    .exec();
  await c.watch("{job7}.state");
  await other.set("{job7}.state", "taken");
  out.watched = await c.multi().set("{job7}.state", "mine").exec();
  out.state = await c.get("{job7}.state");
  out.eval = await c.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, "{job7}.n", 5);
  c.defineCommand("bump", { numberOfKeys: 1, lua: "return redis.call('INCR', KEYS[1])" });
  out.bump = [await c.bump("{job7}.n"), await c.bump("{job7}.n")];
  try {
    await c.multi().set(process.argv[3], 1).set(process.argv[4], 2).exec();
    out.crossslot = "no error";
  } catch (err) {
    out.crossslot = String(err.message);
  }
  console.log(JSON.stringify(out));
  c.disconnect();
  other.disconnect();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
