// ioredis (5, or 6 under the npm alias ioredis6) through the proxy, for the client matrix
// (tests/clients/matrix.py). Usage: node matrix_ioredis.js ioredis|ioredis6 PLAN...
"use strict";
const m = require("./matrix_common");

async function pubsub(c, pub, p) {
  // ioredis's way: a connection of its own in subscriber mode (duplicate())
  const sub = c.duplicate();
  await sub.connect();
  const out = {};
  const message = new Promise((resolve) => sub.on("message", (_ch, msg) => resolve(msg)));
  try {
    await sub.subscribe(p.channel);
  } catch (err) {
    out.subscribe = m.norm(err);
  }
  out.publish = await m.attempt(pub.publish(p.channel, m.MESSAGE));
  if (!("subscribe" in out)) {
    out.subscribe = m.norm(await m.within(2000, message, "message"));
    await sub.unsubscribe(p.channel);
  }
  out.subscribe_then = await m.attempt(sub.get(p.keys[0]));
  sub.disconnect();
  return out;
}

async function main() {
  const [library, ...args] = process.argv.slice(2);
  const p = m.plan(args);
  const Redis = require(library);
  const options = { host: "127.0.0.1", port: p.port, lazyConnect: true, maxRetriesPerRequest: 1 };
  const c = new Redis(options);
  const pub = new Redis(options);
  await c.connect();
  await pub.connect();
  const out = {};
  out.set = await m.attempt(c.set(p.keys[0], m.SET_VALUE));
  out.get = await m.attempt(c.get(p.keys[0]));
  const pipe = c.pipeline();
  p.keys.forEach((key, i) => pipe.set(key, m.VALUES[i]));
  p.keys.forEach((key) => pipe.get(key));
  out.pipeline = (await pipe.exec()).map(([err, value]) => m.norm(err || value));
  out.mget = await m.attempt(c.mget(...p.keys, p.missing));
  const [a, b] = p.tagged;
  const tx = await c.multi().set(a, "1").incr(a).set(b, "x").get(b).exec();
  out.multi_exec = tx.map(([err, value]) => m.norm(err || value));
  out.eval = await m.attempt(c.eval(m.EVAL_SCRIPT, 1, p.scriptKey, 5));
  Object.assign(out, await pubsub(c, pub, p));
  await c.rpush(p.listKey, m.ELEMENT);
  out.blpop = await m.attempt(c.blpop(p.listKey, 1));
  out.blpop_then = await m.attempt(c.get(p.keys[0]));
  c.disconnect();
  pub.disconnect();
  m.emit(library, require(`${library}/package.json`).version, out);
}

m.run(main);
