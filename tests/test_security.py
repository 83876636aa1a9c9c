"""Client authentication, ACL users, limits for strangers and secrets, against real
redis-server processes: every error the proxy gives is compared with Redis's own."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis
import yaml

from tests.conftest import REPO, Fleet, Proxy, RedisServer, free_port
from tests.test_failover import wait_for
from tests.test_transactions import raw, read, read_until_quiet, send

MakeProxy = Callable[[dict[str, object]], Proxy]

P2 = "second-secret"
USERS = [
    {
        "name": "app",
        "passwords": ["p1", "#" + hashlib.sha256(P2.encode()).hexdigest()],
        "rules": "on +@all -flushall ~app:* &news.*",
    },
    {"name": "reader", "passwords": ["r3ad"], "rules": "on +@read +@connection ~*"},
]
# the same users, as ACL SETUSER says them to a Redis server
SETUSER = [
    ["app", "on", ">p1", f">{P2}", "+@all", "-flushall", "~app:*", "&news.*"],
    ["reader", "on", ">r3ad", "+@read", "+@connection", "~*"],
]
SECRETS = ["s3cret", "p1", P2, "r3ad"]


def auth_topology(fleet: Fleet, **extra: object) -> dict[str, object]:
    return fleet.topology(
        admin=f"127.0.0.1:{free_port()}",
        auth={"password": "s3cret", "users": USERS},
        **extra,
    )


@pytest.fixture
def authproxy(fleet: Fleet, make_proxy: MakeProxy) -> Proxy:
    fleet.flushall()
    return make_proxy(auth_topology(fleet))


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server with the same users and the same default password."""
    srv = RedisServer(tmp_path).start()
    with srv.client() as c:
        for argv in SETUSER:
            c.execute_command("ACL", "SETUSER", *argv)
        c.config_set("requirepass", "s3cret")
    yield srv
    srv.stop()


SCRIPT: list[tuple[str, ...]] = [
    ("GET", "app:1"),
    ("NOSUCH", "x"),
    ("GET",),
    ("HELLO", "3"),
    ("AUTH", "wrong"),
    ("AUTH", "app", "wrong"),
    ("AUTH", "nobody", "p1"),
    ("AUTH", "app", "p1"),
    ("GET", "app:1"),
    ("GET", "other"),
    ("MGET", "app:1", "other"),
    ("FLUSHALL",),
    ("PUBLISH", "news.a", "x"),
    ("PUBLISH", "other", "x"),
    ("SUBSCRIBE", "other"),
    ("ACL", "WHOAMI"),
    ("MULTI",),
    ("SET", "app:1", "x"),
    ("FLUSHALL",),
    ("EXEC",),
    ("AUTH", "app", P2),
    ("ACL", "WHOAMI"),
    ("AUTH", "reader", "r3ad"),
    ("SET", "k", "v"),
    ("GET", "app:1"),
    ("CLIENT", "KILL", "ID", "1"),
    ("AUTH", "s3cret"),
    ("ACL", "WHOAMI"),
]


def run_script(port: int) -> list[bytes]:
    s = raw(port)
    try:
        out = []
        for argv in SCRIPT:
            send(s, *argv)
            out.append(read_until_quiet(s))
        return out
    finally:
        s.close()


def test_replies_match_redis_with_the_same_users(
    authproxy: Proxy, locked_redis: RedisServer
) -> None:
    direct = run_script(locked_redis.port)
    through = run_script(authproxy.port)
    refused = {"CLIENT"}  # the proxy refuses CLIENT KILL (not proxyable): NOPERM first there
    for argv, d, p in zip(SCRIPT, direct, through, strict=True):
        if argv[0] in refused:
            assert p.startswith(b"-NOPERM") == d.startswith(b"-NOPERM"), (argv, p, d)
            continue
        assert p == d, f"{argv}: proxy {p!r} != redis {d!r}"
    texts = b"".join(through)
    assert b"-NOAUTH Authentication required." in texts
    assert b"-WRONGPASS invalid username-password pair or user is disabled." in texts
    assert b"no permissions to access one of the keys" in texts
    assert b"no permissions to run the 'flushall' command" in texts
    assert b"no permissions to access one of the channels" in texts


def test_clients_log_in_with_a_username(authproxy: Proxy) -> None:
    for proto in (2, 3):
        with redis.Redis(port=authproxy.port, username="app", password="p1", protocol=proto) as c:
            assert c.set("app:k", "v") and c.get("app:k") == b"v"
            with pytest.raises(redis.exceptions.NoPermissionError):
                c.get("other")
        with redis.Redis(port=authproxy.port, password="s3cret", protocol=proto) as c:
            assert c.execute_command("ACL", "WHOAMI") == b"default"
        bad = redis.Redis(port=authproxy.port, username="app", password="nope", protocol=proto)
        try:
            with pytest.raises(redis.exceptions.AuthenticationError):
                bad.ping()
        finally:
            bad.close()
    out = subprocess.run(
        ["redis-cli", "-p", str(authproxy.port), "--user", "app", "--pass", "p1", "--no-auth-warning",
         "GET", "app:k"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert out.stdout.strip() == "v", out
    out = subprocess.run(
        ["redis-cli", "-p", str(authproxy.port), "-a", "s3cret", "--no-auth-warning", "PING"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert out.stdout.strip() == "PONG", out


async def test_asyncio_hello3_auth(authproxy: Proxy) -> None:
    c = aredis.Redis(port=authproxy.port, username="reader", password="r3ad", protocol=3)
    assert await c.get("app:nothing") is None
    with pytest.raises(redis.exceptions.NoPermissionError):
        await c.set("app:x", "1")
    await c.aclose()


def unauth_limits(port: int) -> list[bytes]:
    out = []
    for frame in (
        b"*11\r\n" + b"$1\r\na\r\n" * 11,
        b"*2\r\n$3\r\nGET\r\n$16385\r\n" + b"x" * 16385 + b"\r\n",
    ):
        s = raw(port)
        s.sendall(frame[:40])  # the header is enough to be refused
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass  # closed with our bytes unread: a reset, once the error was sent
        s.close()
        out.append(data)
    # authenticated, the same requests are ordinary (an error from the server, or a reply)
    s = raw(port)
    send(s, "AUTH", "s3cret")
    read(s)
    send(s, "SET", "app:big", "x" * 100_000)
    out.append(read(s))
    s.close()
    return out


def test_strangers_may_not_send_big_requests(authproxy: Proxy, locked_redis: RedisServer) -> None:
    direct = unauth_limits(locked_redis.port)
    through = unauth_limits(authproxy.port)
    assert through == direct
    assert through[0] == b"-ERR Protocol error: unauthenticated multibulk length\r\n"
    assert through[1] == b"-ERR Protocol error: unauthenticated bulk length\r\n"
    assert through[2] == b"+OK\r\n"


def test_failed_auth_is_counted_and_logged_without_the_password(authproxy: Proxy) -> None:
    s = raw(authproxy.port)
    for _ in range(3):
        send(s, "AUTH", "app", "guess-42")
        assert read(s) == b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    s.close()
    values = authproxy.scrape()
    assert values["shardproxy_auth_failures_total"] == 3
    log = authproxy.output()
    assert "AUTH failed for user 'app'" in log
    assert "guess-42" not in log


def test_secrets_appear_nowhere(authproxy: Proxy, fleet: Fleet, tmp_path: Path) -> None:
    with redis.Redis(port=authproxy.port, password="s3cret") as c:
        info = c.execute_command("INFO")
    _, topology = authproxy.http("/topology")
    _, metrics = authproxy.http("/metrics")
    _, reload = authproxy.http("/reload", method="POST")
    check = subprocess.run(
        [sys.executable, "-m", "shardproxy", "check", "-c", str(authproxy.path)],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    bad = dict(
        authproxy.topology,
        auth={"password": "s3cret", "users": [dict(USERS[0], rules="on +nosuch")]},
    )
    bad_path = tmp_path / "bad.yaml"
    bad_path.write_text(yaml.safe_dump(bad))
    refused = subprocess.run(
        [sys.executable, "-m", "shardproxy", "check", "-c", str(bad_path)],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "auth.users[0].rules" in refused.stderr and "unknown command 'nosuch'" in refused.stderr
    outputs = {
        "INFO": info if isinstance(info, str) else str(info),
        "/topology": topology,
        "/metrics": metrics,
        "reload result": reload,
        "check": check.stdout + check.stderr,
        "check (refused)": refused.stdout + refused.stderr,
        "log": authproxy.output(),
    }
    for where, text in outputs.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} in {where}"
    assert json.loads(reload)["result"] == "success"


def test_a_reload_applies_users_to_connected_clients(fleet: Fleet, make_proxy: MakeProxy) -> None:
    topo = auth_topology(fleet)
    p = make_proxy(topo)
    reader = redis.Redis(port=p.port, username="reader", password="r3ad")
    app = redis.Redis(port=p.port, username="app", password="p1")
    assert reader.get("app:x") is None and app.get("app:x") is None
    changed = dict(USERS[0], rules="on +@all -get ~app:*")
    p.path.write_text(yaml.safe_dump(dict(topo, auth={"password": "s3cret", "users": [changed]})))
    status, body = p.http("/reload", method="POST")
    assert status == 200 and json.loads(body)["result"] == "success", body
    with pytest.raises(redis.exceptions.ConnectionError):
        reader.get("app:x")  # its user is gone: disconnected
    with pytest.raises(redis.exceptions.NoPermissionError):
        app.get("app:x")  # the same connection, the new rules
    assert app.set("app:x", "1")
    assert p.scrape()['shardproxy_client_disconnects_total{reason="user_removed"}'] == 1
    reader.close()
    app.close()


def test_idle_clients_are_closed(fleet: Fleet, make_proxy: MakeProxy) -> None:
    p = make_proxy(
        fleet.topology(admin=f"127.0.0.1:{free_port()}", limits={"client_idle_timeout_s": 1})
    )
    idle = raw(p.port)
    subscriber = raw(p.port)
    send(subscriber, "SUBSCRIBE", "keepalive")
    read(subscriber)
    busy = redis.Redis(port=p.port)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3:
        busy.ping()
        time.sleep(0.2)
    idle.settimeout(1)
    assert idle.recv(10) == b""  # closed by the proxy
    send(subscriber, "PING")
    assert read(subscriber) == b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"  # a subscriber stays
    assert busy.ping()
    assert p.scrape()['shardproxy_client_disconnects_total{reason="idle"}'] == 1
    for s in (idle, subscriber):
        s.close()
    busy.close()


def test_a_client_that_never_reads_is_disconnected(fleet: Fleet, make_proxy: MakeProxy) -> None:
    p = make_proxy(
        fleet.topology(admin=f"127.0.0.1:{free_port()}", limits={"max_unread_bytes": "4mb"})
    )
    with redis.Redis(port=p.port) as c:
        c.set("big", "x" * 1_000_000)
        lazy = socket.socket()
        try:
            lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            lazy.connect(("127.0.0.1", p.port))
            frame = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n"
            for _ in range(40):  # 40 MB of replies it never reads
                lazy.sendall(frame)
            wait_for(
                "the lazy client dropped",
                lambda: p.scrape().get('shardproxy_client_disconnects_total{reason="unread"}') == 1,
                10,
            )
            assert c.get("big") == b"x" * 1_000_000  # everyone else unaffected
            assert p.output().count("replies unread (limits.max_unread_bytes)") == 1
        finally:
            lazy.close()
        c.delete("big")


def test_admin_token(fleet: Fleet, make_proxy: MakeProxy) -> None:
    p = make_proxy(fleet.topology(admin=f"127.0.0.1:{free_port()}", admin_token="t0ken"))
    import urllib.error
    import urllib.request

    def post(token: str | None, path: str = "/reload", method: str = "POST") -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{p.admin_port}{path}", method=method)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            e.close()
            return e.code

    assert post(None) == 401
    assert post("wrong") == 401
    assert post("t0ken") == 200
    assert post(None, "/metrics", "GET") == 200  # only /reload, unless everywhere
    assert "t0ken" not in p.output()
    q = make_proxy(
        fleet.topology(
            admin=f"127.0.0.1:{free_port()}", admin_token="t0ken", admin_token_everywhere=True
        )
    )
    p = q
    assert post(None, "/metrics", "GET") == 401
    assert post("t0ken", "/metrics", "GET") == 200


def test_admin_beyond_loopback_without_a_token_is_warned_about(
    fleet: Fleet, make_proxy: MakeProxy
) -> None:
    p = make_proxy(fleet.topology(admin=f"0.0.0.0:{free_port()}"))
    wait_for("the warning", lambda: "has no admin_token" in p.output(), 5)
