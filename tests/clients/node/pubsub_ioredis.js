// ioredis 5 through the proxy: 20 channels x 5 messages, each received once and in order
// (tests/test_pubsub.py). Usage: node pubsub_ioredis.js PORT; prints one JSON line.
"use strict";
const Redis = require("ioredis");

async function main() {
  const port = Number(process.argv[2]);
  const options = { host: "127.0.0.1", port, lazyConnect: true, maxRetriesPerRequest: 1 };
  const sub = new Redis(options);
  const pub = new Redis(options);
  await sub.connect();
  await pub.connect();
  const channels = Array.from({ length: 20 }, (_, i) => `node.room${i}`);
  const got = new Map(channels.map((c) => [c, []]));
  let received = 0;
  let done;
  const all = new Promise((resolve) => (done = resolve));
  sub.on("message", (channel, message) => {
    got.get(channel).push(message);
    received += 1;
    if (received === 100) done();
  });
  const subscribed = await sub.subscribe(...channels);
  const counts = [];
  for (let n = 0; n < 5; n++) {
    for (const c of channels) counts.push(await pub.publish(c, `${c}:${n}`));
  }
  const timer = setTimeout(done, 5000);
  await all;
  clearTimeout(timer);
  await new Promise((resolve) => setTimeout(resolve, 200)); // nothing twice
  const inOrder = channels.every((c) => {
    const list = got.get(c);
    return list.length === 5 && list.every((m, n) => m === `${c}:${n}`);
  });
  console.log(JSON.stringify({ subscribed, received, in_order: inOrder, published_counts: counts }));
  sub.disconnect();
  pub.disconnect();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
