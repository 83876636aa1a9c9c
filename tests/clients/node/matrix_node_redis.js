// node-redis (the npm package redis, as the aliases redis4, redis5, redis6) through the
// proxy, for the client matrix (tests/clients/matrix.py).
// Usage: node matrix_node_redis.js redis4|redis5|redis6 PLAN...
"use strict";
const m = require("./matrix_common");

async function pubsub(c, p) {
  // node-redis's way: a duplicate() client that subscribes with a listener
  const sub = c.duplicate();
  sub.on("error", () => {});
  await sub.connect();
  const out = {};
  let received;
  const message = new Promise((resolve) => { received = resolve; });
  try {
    await sub.subscribe(p.channel, (msg) => received(msg));
  } catch (err) {
    out.subscribe = m.norm(err);
  }
  out.publish = await m.attempt(c.publish(p.channel, m.MESSAGE));
  if (!("subscribe" in out)) {
    out.subscribe = m.norm(await m.within(2000, message, "message"));
    await sub.unsubscribe(p.channel);
  }
  out.subscribe_then = await m.attempt(sub.get(p.keys[0]));
  await sub.quit();
  return out;
}

async function main() {
  const [library, ...args] = process.argv.slice(2);
  const p = m.plan(args);
  const { createClient } = require(library);
  const c = createClient({ socket: { host: "127.0.0.1", port: p.port, reconnectStrategy: false } });
  c.on("error", (err) => console.error(`${library}: ${err.message}`));
  await c.connect();
  const out = {};
  out.set = await m.attempt(c.set(p.keys[0], m.SET_VALUE));
  out.get = await m.attempt(c.get(p.keys[0]));
  const pipe = c.multi();
  p.keys.forEach((key, i) => pipe.set(key, m.VALUES[i]));
  p.keys.forEach((key) => pipe.get(key));
  out.pipeline = await m.attempt(pipe.execAsPipeline());
  out.mget = await m.attempt(c.mGet([...p.keys, p.missing]));
  const [a, b] = p.tagged;
  out.multi_exec = await m.attempt(c.multi().set(a, "1").incr(a).set(b, "x").get(b).exec());
  out.eval = await m.attempt(c.eval(m.EVAL_SCRIPT, { keys: [p.scriptKey], arguments: ["5"] }));
  Object.assign(out, await pubsub(c, p));
  await c.rPush(p.listKey, m.ELEMENT);
  out.blpop = await m.attempt(c.blPop(p.listKey, 1));
  out.blpop_then = await m.attempt(c.get(p.keys[0]));
  await c.quit();
  m.emit(library, require(`${library}/package.json`).version, out);
}

m.run(main);
