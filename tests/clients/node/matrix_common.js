// What the node client scripts of the client matrix share (tests/clients/matrix.py):
// the plan from argv, normalising replies, and the one JSON line they print.
// argv after the library: PORT K1 K2 K3 MISSING TAG_A TAG_B SCRIPT_KEY LIST_KEY CHANNEL
"use strict";

const EVAL_SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
const SET_VALUE = "hello";
const VALUES = ["v1", "v2", "v3"];
const MESSAGE = "hello";
const ELEMENT = "x";

function plan(args) {
  const [port, k1, k2, k3, missing, tagA, tagB, scriptKey, listKey, channel] = args;
  return {
    port: Number(port), keys: [k1, k2, k3], missing, tagged: [tagA, tagB], scriptKey,
    listKey, channel,
  };
}

// A reply as JSON: Buffers as text, an Error as {"error": its message}, BLPOP's
// {key, element} (node-redis) as [key, element].
function norm(value) {
  if (value instanceof Error) return { error: value.message };
  if (Buffer.isBuffer(value)) return value.toString();
  if (Array.isArray(value)) return value.map(norm);
  if (value && typeof value === "object" && "key" in value && "element" in value) {
    return [norm(value.key), norm(value.element)];
  }
  return value === undefined ? null : value;
}

async function attempt(promise) {
  try {
    return norm(await promise);
  } catch (err) {
    return norm(err);
  }
}

function within(ms, promise, what) {
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve({ error: `no ${what} within ${ms} ms` }), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function emit(library, version, result) {
  console.log(JSON.stringify({ library, version, ...result }));
}

function run(main) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}

module.exports = {
  EVAL_SCRIPT, SET_VALUE, VALUES, MESSAGE, ELEMENT, plan, norm, attempt, within, emit, run,
};
