# redis-rb (Debian ruby-redis) through the proxy, for the client matrix (tests/clients/matrix.py).
# Usage: ruby matrix.rb PORT K1 K2 K3 MISSING TAG_A TAG_B SCRIPT_KEY LIST_KEY CHANNEL
# Prints one JSON line of results.
require "json"
require "redis"

EVAL_SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
SET_VALUE = "hello"
VALUES = %w[v1 v2 v3].freeze
MESSAGE = "hello"
ELEMENT = "x"

port, k1, k2, k3, missing, tag_a, tag_b, script_key, list_key, channel = ARGV
keys = [k1, k2, k3]

def attempt
  yield
rescue Redis::BaseError => e
  { "error" => e.message }
end

def norm(value)
  value.is_a?(Redis::CommandError) ? { "error" => value.message } : value
end

c = Redis.new(host: "127.0.0.1", port: Integer(port), timeout: 10)
pub = Redis.new(host: "127.0.0.1", port: Integer(port), timeout: 10)
out = {}
out["set"] = attempt { c.set(k1, SET_VALUE) }
out["get"] = attempt { c.get(k1) }
out["pipeline"] = attempt do
  c.pipelined do |pipe|
    keys.zip(VALUES).each { |key, value| pipe.set(key, value) }
    keys.each { |key| pipe.get(key) }
  end.map { |v| norm(v) }
end
out["mget"] = attempt { c.mget(*keys, missing) }
out["multi_exec"] = attempt do
  c.multi do |tx|
    tx.set(tag_a, "1")
    tx.incr(tag_a)
    tx.set(tag_b, "x")
    tx.get(tag_b)
  end.map { |v| norm(v) }
end
out["eval"] = attempt { c.eval(EVAL_SCRIPT, keys: [script_key], argv: [5]) }

# pub/sub, redis-rb's way: the connection itself subscribes (a block that runs until
# unsubscribed); the publisher is another connection
begin
  c.subscribe_with_timeout(2, channel) do |on|
    on.subscribe { |_ch, _n| out["publish"] = attempt { pub.publish(channel, MESSAGE) } }
    on.message do |_ch, msg|
      out["subscribe"] = msg
      c.unsubscribe
    end
  end
rescue Redis::BaseError => e
  out["subscribe"] = { "error" => e.message }
end
out["publish"] = attempt { pub.publish(channel, MESSAGE) } unless out.key?("publish")
out["subscribe_then"] = attempt { c.get(k1) }

c.rpush(list_key, ELEMENT)
out["blpop"] = attempt { c.blpop(list_key, timeout: 1) }
out["blpop_then"] = attempt { c.get(k1) }
c.close
pub.close
puts JSON.generate({ "library" => "redis-rb", "version" => Redis::VERSION }.merge(out))
