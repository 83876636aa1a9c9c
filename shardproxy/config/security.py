"""The security sections of the topology: client users (``auth``), client TLS listeners
(``tls``) and TLS to the nodes (``backend.tls``). Schema dataclasses like those of
:mod:`shardproxy.config.model`, which composes them into :class:`~shardproxy.config.Config`;
the ACL rules themselves are compiled by the proxy (``shardproxy.commands.acl``), which knows
the commands.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shardproxy.config.kinds import ACL_RULES, CLIENT_CERTS, PASSWORDS, TLS_LISTENERS, Address
from shardproxy.config.schema import BOOL, NAME, OPTIONAL_STRING, _key


@dataclass(frozen=True)
class BackendTlsConfig:
    """TLS to every Redis node (absent: plain TCP)."""

    enabled: bool = field(
        default=False,
        metadata=_key(
            BOOL,
            "connect to the nodes over TLS (also on as soon as ca_file, cert_file or "
            "server_name is given)",
        ),
    )
    ca_file: str | None = field(
        default=None,
        metadata=_key(OPTIONAL_STRING, "CA certificate(s) the nodes' certificates chain to"),
    )
    cert_file: str | None = field(
        default=None,
        metadata=_key(OPTIONAL_STRING, "client certificate, for Redis's tls-auth-clients"),
    )
    key_file: str | None = field(
        default=None, metadata=_key(OPTIONAL_STRING, "the client certificate's private key")
    )
    server_name: str | None = field(
        default=None,
        metadata=_key(
            OPTIONAL_STRING, "name to verify the nodes' certificates against; null: the node's host"
        ),
    )
    verify: bool = field(
        default=True,
        metadata=_key(BOOL, "verify the nodes' certificates (false: encryption only)"),
    )


@dataclass(frozen=True)
class UserConfig:
    """One client user (``AUTH <name> <password>``)."""

    name: str = field(metadata=_key(NAME, "the user's name, as AUTH and HELLO AUTH give it"))
    passwords: tuple[str, ...] = field(
        default=(),
        metadata=_key(
            PASSWORDS,
            "its passwords: plain, or `#` and the SHA-256 in hex, as Redis's ACL stores them",
            secret=True,
        ),
    )
    rules: str = field(
        default="on +@all ~* &*",
        metadata=_key(
            ACL_RULES,
            "what it may do, in Redis ACL rule syntax: on/off, +@category, -command, "
            "+command|subcommand, ~keypattern, %R~ / %W~, &channelpattern, allkeys, "
            "allchannels, nopass, >password, #sha256 (README: Security)",
        ),
    )


@dataclass(frozen=True)
class AuthConfig:
    """Client authentication; with neither key set, clients need no AUTH (as Redis)."""

    password: str | None = field(
        default=None,
        metadata=_key(
            OPTIONAL_STRING,
            "the default user's password (Redis's requirepass): `AUTH <password>`",
            secret=True,
        ),
    )
    users: tuple[UserConfig, ...] = field(default=(), metadata={"sections": UserConfig})


@dataclass(frozen=True)
class TlsConfig:
    """TLS listeners for clients (the plain `listen` ones stay as they are)."""

    listen: tuple[Address, ...] = field(
        default=(), metadata=_key(TLS_LISTENERS, 'TLS listener(s) for clients: "host:port"')
    )
    cert_file: str | None = field(
        default=None, metadata=_key(OPTIONAL_STRING, "the proxy's certificate (PEM)")
    )
    key_file: str | None = field(
        default=None, metadata=_key(OPTIONAL_STRING, "its private key (PEM)")
    )
    ca_file: str | None = field(
        default=None,
        metadata=_key(OPTIONAL_STRING, "CA certificate(s) that client certificates must chain to"),
    )
    client_certs: str = field(
        default="none",
        metadata=_key(
            CLIENT_CERTS,
            "`none`; `optional` (a certificate, if sent, must verify); `required` (mutual TLS)",
        ),
    )
