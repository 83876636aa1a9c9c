<?php
// phpredis (Debian php-redis) through the proxy, for the client matrix (tests/clients/matrix.py).
// Usage: php matrix.php PORT K1 K2 K3 MISSING TAG_A TAG_B SCRIPT_KEY LIST_KEY CHANNEL
// Prints one JSON line of results. phpredis reports an error reply by returning false and
// keeping the message for getLastError(), which is what is recorded.

const EVAL_SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
const SET_VALUE = "hello";
const VALUES = ["v1", "v2", "v3"];
const MESSAGE = "hello";
const ELEMENT = "x";

[, $port, $k1, $k2, $k3, $missing, $tagA, $tagB, $scriptKey, $listKey, $channel] = $argv;
$port = (int)$port;
$keys = [$k1, $k2, $k3];

function connect(int $port): Redis {
    $r = new Redis();
    $r->connect("127.0.0.1", $port, 10.0);
    $r->setOption(Redis::OPT_READ_TIMEOUT, 10);
    return $r;
}

// A reply as the matrix records it: true as "OK", false with a last error as the error.
function norm(Redis $r, $value) {
    if ($value === true) {
        return "OK";
    }
    if ($value === false && $r->getLastError() !== null) {
        $error = ["error" => $r->getLastError()];
        $r->clearLastError();
        return $error;
    }
    if (is_array($value)) {
        return array_map(fn ($v) => $v === true ? "OK" : $v, $value);
    }
    return $value;
}

// MGET's missing key: phpredis gives false for a nil element
function nils(array $values): array {
    return array_map(fn ($v) => $v === false ? null : $v, $values);
}

$c = connect($port);
$out = [];
$out["set"] = norm($c, $c->set($k1, SET_VALUE));
$out["get"] = norm($c, $c->get($k1));
$pipe = $c->pipeline();
foreach ($keys as $i => $key) {
    $pipe->set($key, VALUES[$i]);
}
foreach ($keys as $key) {
    $pipe->get($key);
}
$out["pipeline"] = norm($c, $pipe->exec());
$out["mget"] = nils(norm($c, $c->mget([...$keys, $missing])));
$out["multi_exec"] = norm($c, $c->multi()->set($tagA, "1")->incr($tagA)->set($tagB, "x")->get($tagB)->exec());
$out["eval"] = norm($c, $c->eval(EVAL_SCRIPT, [$scriptKey, 5], 1));

// pub/sub, phpredis's way: subscribe() blocks in its callback until it unsubscribes; the
// publisher is a forked process on a connection of its own, 0.3 s later
[$parentEnd, $childEnd] = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, STREAM_IPPROTO_IP);
$pid = pcntl_fork();
if ($pid === 0) {
    fclose($parentEnd);
    usleep(300000);
    $pub = connect($port);
    fwrite($childEnd, json_encode(norm($pub, $pub->publish($channel, MESSAGE))));
    fclose($childEnd);
    exit(0);
}
fclose($childEnd);
$c->setOption(Redis::OPT_READ_TIMEOUT, 3);
// phpredis 5 has no clean way out of subscribe()'s loop (an UNSUBSCRIBE in the callback
// leaves it waiting for the next message): the callback closes the connection, and the next
// command opens a new one
$received = null;
try {
    $subscribed = $c->subscribe([$channel], function ($redis, $ch, $msg) use (&$received) {
        $received = $msg;
        $redis->close();
    });
    $out["subscribe"] = $received ?? norm($c, $subscribed);
} catch (RedisException $e) {
    $out["subscribe"] = $received ?? ["error" => $e->getMessage()];
}
$out["publish"] = json_decode(stream_get_contents($parentEnd), true);
pcntl_waitpid($pid, $status);
$c->setOption(Redis::OPT_READ_TIMEOUT, 10);
$out["subscribe_then"] = norm($c, $c->get($k1));

$c->rPush($listKey, ELEMENT);
$out["blpop"] = norm($c, $c->blPop([$listKey], 1));
$out["blpop_then"] = norm($c, $c->get($k1));
$c->close();
echo json_encode(["library" => "phpredis", "version" => phpversion("redis")] + $out), "\n";
