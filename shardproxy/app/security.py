"""What the topology file says about security, turned into working parts: the client users
(compiled from Redis ACL rules), the TLS contexts (client listeners, backend connections) and
the admin token. Each is rebuilt on reload, so certificates and users are read again.

:func:`problems` is what ``shardproxy check`` and a reload refuse on: ACL rules that are not
Redis syntax, certificate or key files that cannot be loaded.
"""

from __future__ import annotations

import logging
import ssl

from shardproxy.commands.acl import AclError, Users, compile_user, compile_users
from shardproxy.commands.table import CommandSpec
from shardproxy.config import Config
from shardproxy.control import fleet

log = logging.getLogger("shardproxy.security")

_CLIENT_CERTS = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def users(config: Config, base: dict[bytes, CommandSpec]) -> Users:
    """The client users of ``config`` (raises AclError naming a bad rule)."""
    auth = config.auth
    return compile_users(auth.password, [(u.name, u.passwords, u.rules) for u in auth.users], base)


def server_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context of the client listeners (``tls``), or None without any."""
    tls = config.tls
    if not tls.listen:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    assert tls.cert_file is not None and tls.key_file is not None  # (loader checks)
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    ctx.verify_mode = _CLIENT_CERTS[tls.client_certs]
    if tls.ca_file is not None:
        ctx.load_verify_locations(tls.ca_file)
    return ctx


def problems(config: Config) -> list[str]:
    """What makes ``config`` unusable beyond its syntax: ``key.path: problem`` lines."""
    out: list[str] = []
    for i, u in enumerate(config.auth.users):
        try:
            compile_user(u.name, u.rules, u.passwords)
        except AclError as exc:
            out.append(f"auth.users[{i}].rules: {exc}")
    for what, make in (("tls", server_context), ("backend.tls", fleet.backend_context)):
        try:
            make(config)
        except (OSError, ssl.SSLError, ValueError) as exc:
            out.append(f"{what}: cannot load the certificate or key: {exc}")
    return out


def admin_warning(config: Config) -> str | None:
    """A warning when the admin port listens beyond loopback without a token."""
    a = config.admin
    if a is None or a.unix or config.admin_token:
        return None
    if a.host in ("127.0.0.1", "::1", "localhost"):
        return None
    return (
        f"admin HTTP on {a} is reachable beyond this host and has no admin_token: anyone who "
        "can reach it may POST /reload"
    )
