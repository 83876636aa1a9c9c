"""TLS on both sides, against real TLS redis-server processes (Debian's redis is built with
TLS): clients to the proxy, mutual TLS, the proxy to its nodes, certificates read again on
reload."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from bench.tlscerts import Certs, make_certs
from tests.conftest import Fleet, Proxy, RedisServer, free_port
from tests.test_failover import wait_for

MakeProxy = Callable[[dict[str, object]], Proxy]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


class TlsRedisServer(RedisServer):
    """A redis-server that speaks only TLS on its port (clients may show a certificate)."""

    def __init__(self, workdir: Path, certs: Certs) -> None:
        super().__init__(workdir)
        self.certs = certs

    def argv(self) -> list[str]:
        args = super().argv()
        i = args.index("--port")
        args[i + 1] = "0"
        return [
            *args,
            "--tls-port", str(self.port),
            "--tls-cert-file", self.certs.server_cert,
            "--tls-key-file", self.certs.server_key,
            "--tls-ca-cert-file", self.certs.ca,
            "--tls-auth-clients", "optional",
        ]  # fmt: skip

    def client(self, **kw: object) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            ssl=True,
            ssl_ca_certs=self.certs.ca,
            protocol=2,
            **kw,  # type: ignore[arg-type]
        )


@pytest.fixture(scope="module")
def tls_fleet(
    tmp_path_factory: pytest.TempPathFactory, certs: Certs
) -> Iterator[list[RedisServer]]:
    work = tmp_path_factory.mktemp("tls-fleet")
    servers: list[RedisServer] = [TlsRedisServer(work, certs).start() for _ in range(2)]
    yield servers
    for s in servers:
        s.stop()


def tls_client(
    port: int, certs: Certs, cert: str | None = None, key: str | None = None, **kw: object
) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        ssl=True,
        ssl_ca_certs=certs.ca,
        ssl_certfile=cert,
        ssl_keyfile=key,
        socket_timeout=5,
        **kw,  # type: ignore[arg-type]
    )


def tls_topology(fleet: Fleet, certs: Certs, client_certs: str = "none") -> dict[str, object]:
    return fleet.topology(
        admin=f"127.0.0.1:{free_port()}",
        tls={
            "listen": [f"127.0.0.1:{free_port()}"],
            "cert_file": certs.server_cert,
            "key_file": certs.server_key,
            "ca_file": certs.ca,
            "client_certs": client_certs,
        },
    )


def tls_port(p: Proxy) -> int:
    tls = p.topology["tls"]
    assert isinstance(tls, dict)
    return int(tls["listen"][0].rsplit(":", 1)[1])


def test_both_sides_over_tls(
    tls_fleet: list[RedisServer], certs: Certs, tmp_path: Path, make_proxy: MakeProxy
) -> None:
    topo: dict[str, object] = {
        "listen": f"127.0.0.1:{free_port()}",
        "admin": f"127.0.0.1:{free_port()}",
        "shards": [{"name": f"s{i + 1}", "primary": s.address} for i, s in enumerate(tls_fleet)],
        "tls": {
            "listen": f"127.0.0.1:{free_port()}",
            "cert_file": certs.server_cert,
            "key_file": certs.server_key,
        },
        "backend": {
            "tls": {
                "enabled": True,
                "ca_file": certs.ca,
                "cert_file": certs.client_cert,
                "key_file": certs.client_key,
            }
        },
    }
    p = make_proxy(topo)
    wait_for("every node probed over TLS", lambda: p.http("/readyz")[0] == 200, 10)
    port = int(str(topo["tls"]["listen"]).rsplit(":", 1)[1])  # type: ignore[index]
    for proto in (2, 3):
        with tls_client(port, certs, protocol=proto) as c:
            keys = [f"tls:{proto}:{i}" for i in range(20)]
            c.mset({k: k for k in keys})
            assert c.mget(keys) == [k.encode() for k in keys]  # over both shards
            pipe = c.pipeline(transaction=True)
            pipe.incr("{t}n").incr("{t}n")
            assert pipe.execute() == [1, 2]  # a leased connection, over TLS too
            ps = c.pubsub()
            ps.subscribe("tls.ch")
            assert ps.get_message(timeout=2)["type"] == "subscribe"
            c.publish("tls.ch", "hi")
            assert ps.get_message(timeout=2)["data"] == b"hi"
            ps.close()
            c.delete("{t}n", *keys)
    with redis.Redis(port=p.port) as plain:  # the plain listener still works beside it
        assert plain.ping()
    cli = shutil.which("redis-cli")
    assert cli is not None
    out = subprocess.run(
        [cli, "-p", str(port), "--tls", "--cacert", certs.ca, "PING"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert out.stdout.strip() == "PONG", out
    # every node connection is TLS: a plain connection to a node is refused by Redis
    for srv in tls_fleet:
        with srv.client() as d:
            assert int(d.info("clients")["connected_clients"]) >= 2  # the proxy's, over TLS


def handshake(port: int, certs: Certs, cert: str | None = None, key: str | None = None) -> str:
    """'ok' when a TLS client gets a PONG, else the reason it failed."""
    ctx = ssl.create_default_context(cafile=certs.ca)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw_sock:
            with ctx.wrap_socket(raw_sock, server_hostname="127.0.0.1") as s:
                s.sendall(b"PING\r\n")
                data = s.recv(100)
                if not data:  # (TLS 1.3: the server checks the certificate after the
                    return "refused: closed"  # client's handshake is done, then closes)
                return "ok" if data == b"+PONG\r\n" else f"got {data!r}"
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc}"


def test_mutual_tls_required(fleet: Fleet, certs: Certs, make_proxy: MakeProxy) -> None:
    p = make_proxy(tls_topology(fleet, certs, "required"))
    port = tls_port(p)
    assert handshake(port, certs, certs.client_cert, certs.client_key) == "ok"
    assert handshake(port, certs).startswith("refused")
    assert handshake(port, certs, certs.stranger_cert, certs.stranger_key).startswith("refused")
    with tls_client(port, certs, certs.client_cert, certs.client_key) as c:
        assert c.set("mtls", "1") and c.get("mtls") == b"1"
        c.delete("mtls")


def test_client_certificates_optional(fleet: Fleet, certs: Certs, make_proxy: MakeProxy) -> None:
    p = make_proxy(tls_topology(fleet, certs, "optional"))
    port = tls_port(p)
    assert handshake(port, certs) == "ok"
    assert handshake(port, certs, certs.client_cert, certs.client_key) == "ok"
    assert handshake(port, certs, certs.stranger_cert, certs.stranger_key).startswith("refused")


def peer_serial(port: int, certs: Certs) -> int:
    ctx = ssl.create_default_context(cafile=certs.ca)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw_sock:
        with ctx.wrap_socket(raw_sock, server_hostname="127.0.0.1") as s:
            der = s.getpeercert(binary_form=True)
            assert der is not None
            return hash(der)


def test_certificates_are_read_again_on_reload(
    fleet: Fleet, certs: Certs, tmp_path: Path, make_proxy: MakeProxy
) -> None:
    mine = tmp_path / "proxy-certs"
    mine.mkdir()
    for name in ("server.crt", "server.key"):
        shutil.copy(certs.path(name), mine / name)
    topo = tls_topology(fleet, certs)
    tls = topo["tls"]
    assert isinstance(tls, dict)
    tls["cert_file"], tls["key_file"] = str(mine / "server.crt"), str(mine / "server.key")
    p = make_proxy(topo)
    port = tls_port(p)
    before = peer_serial(port, certs)
    fresh = make_certs(tmp_path / "fresh")  # a new CA and server certificate
    shutil.copy(fresh.server_cert, mine / "server.crt")
    shutil.copy(fresh.server_key, mine / "server.key")
    status, body = p.http("/reload", method="POST")
    assert status == 200 and json.loads(body)["result"] == "success", body
    assert peer_serial(port, fresh) != before  # the new certificate, on the same listener
    with pytest.raises(ssl.SSLError):
        peer_serial(port, certs)  # the old CA does not vouch for it


def test_bad_certificate_files_are_refused_by_check(
    fleet: Fleet, certs: Certs, tmp_path: Path
) -> None:
    import sys

    import yaml

    from tests.conftest import REPO

    topo = tls_topology(fleet, certs)
    tls = topo["tls"]
    assert isinstance(tls, dict)
    tls["cert_file"] = str(tmp_path / "missing.crt")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(topo))
    out = subprocess.run(
        [sys.executable, "-m", "shardproxy", "check", "-c", str(path)],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 1
    assert "tls: cannot load the certificate or key" in out.stderr
