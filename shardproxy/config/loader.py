"""Reading a topology: YAML -> a validated :class:`~shardproxy.config.model.Config`.

This module owns :class:`ConfigError`, the rules that span several keys (:func:`_cross_checks`:
shard names unique, a node in one place only, ...), :func:`parse`, which walks the section
dataclasses over a loaded YAML document and collects every problem before raising, each as
``key.path: problem`` (``shards[1].primary: ...``, ``limits.foo: unknown key``), and
:func:`load`, which reads the file with a strict YAML loader (a key given twice is an error).

Nothing here does I/O except :func:`load`, and nothing imports asyncio.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import yaml

from shardproxy.config.kinds import LISTENERS, Address
from shardproxy.config.model import Config
from shardproxy.config.schema import _build


class ConfigError(Exception):
    """The topology is invalid. ``problems`` lists every problem, each ``key.path: problem``."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        #: The file the problems were found in, or None when parsing data that came from elsewhere.
        self.source = source


# --- parsing and loading ------------------------------------------------------------------------


def _cross_checks(data: Mapping[Any, Any], problems: list[str]) -> None:
    """Rules spanning several keys, checked on the raw data so they add to the other problems."""
    shards = data.get("shards")
    if shards == []:
        problems.append("shards: must list at least one shard")
    if not isinstance(shards, list):
        shards = []
    names: dict[str, int] = {}
    nodes: dict[Address, str] = {}
    for i, shard in enumerate(shards):
        if not isinstance(shard, Mapping):
            continue
        name = shard.get("name")
        if isinstance(name, str):
            if name in names:
                problems.append(f"shards[{i}].name: duplicate shard name {name!r}")
            names.setdefault(name, i)
        listed: list[tuple[str, object]] = [(f"shards[{i}].primary", shard.get("primary"))]
        replicas = shard.get("replicas")
        if isinstance(replicas, list):
            listed += [(f"shards[{i}].replicas[{j}]", r) for j, r in enumerate(replicas)]
        for where, text in listed:
            address = _parsed(text)
            if address is None:
                continue
            if address in nodes:
                problems.append(f"{where}: node {address} is already listed at {nodes[address]}")
            else:
                nodes[address] = where
    listen = data.get("listen", LISTENERS.display(Config.__dataclass_fields__["listen"].default))
    listeners = [("listen", listen)] if isinstance(listen, str) else []
    if isinstance(listen, list):
        listeners = [(f"listen[{i}]", text) for i, text in enumerate(listen)]
    seen: dict[Address, str] = {}
    for where, text in listeners:
        address = _parsed(text)
        if address is None:
            continue
        if address in nodes:
            problems.append(f"{where}: {address} is also a backend node ({nodes[address]})")
        if address in seen:
            problems.append(f"{where}: {address} is already listed at {seen[address]}")
        seen.setdefault(address, where)
    admin = _parsed(data.get("admin"))
    if admin is not None and admin in seen:
        problems.append(f"admin: {admin} is also a RESP listener ({seen[admin]})")
    backend = data.get("backend")
    if isinstance(backend, Mapping) and backend.get("username") and not backend.get("password"):
        problems.append("backend.username: needs backend.password as well")
    failover = data.get("failover")
    sentinel = data.get("sentinel")
    if isinstance(failover, Mapping) and failover.get("mode") == "sentinel":
        if not isinstance(sentinel, Mapping) or not sentinel.get("addresses"):
            problems.append("sentinel.addresses: failover.mode sentinel needs at least one address")


def _parsed(text: object) -> Address | None:
    if not isinstance(text, str):
        return None
    try:
        return Address.parse(text)
    except ValueError:
        return None


def parse(data: object, source: str | None = None) -> Config:
    """Validate a loaded YAML document and build the :class:`Config`.

    Raises :class:`ConfigError` listing every problem found, each with its key path.
    """
    problems: list[str] = []
    config = _build(Config, data, "", problems)
    if isinstance(data, Mapping):
        _cross_checks(data, problems)
    if config is not None:
        _security_checks(config, problems)
    if problems or config is None:
        raise ConfigError(problems, source)
    return dataclasses.replace(config, source=source)


def _security_checks(config: Config, problems: list[str]) -> None:
    """auth and tls rules that span keys (the ACL rules themselves are compiled by the
    proxy, which knows the commands: shardproxy.commands.acl)."""
    names: dict[str, int] = {}
    for i, user in enumerate(config.auth.users):
        if user.name in names:
            problems.append(f"auth.users[{i}].name: duplicate user {user.name!r}")
        names.setdefault(user.name, i)
    if config.auth.password is not None and "default" in names:
        problems.append(
            f"auth.users[{names['default']}].name: the default user is set by auth.password "
            "already; give one or the other"
        )
    tls = config.tls
    if tls.listen and (tls.cert_file is None or tls.key_file is None):
        problems.append("tls.listen: needs tls.cert_file and tls.key_file")
    if tls.client_certs != "none" and tls.ca_file is None:
        problems.append(f"tls.client_certs: {tls.client_certs} needs tls.ca_file")
    seen = {str(a) for a in config.listen}
    for i, a in enumerate(tls.listen):
        if str(a) in seen:
            problems.append(f"tls.listen[{i}]: {a} is also a plain listener")
    b = config.backend.tls
    if (b.cert_file is None) != (b.key_file is None):
        problems.append("backend.tls.cert_file: needs backend.tls.key_file (and the other way)")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key; construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load(path: str) -> Config:
    """Read and :func:`parse` the topology file at ``path``.

    An unreadable file or invalid YAML is a :class:`ConfigError` too, its problem prefixed with
    the path (and ``:line:column`` for YAML errors).
    """
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"], path) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        where = path
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f"{path}:{mark.line + 1}:{mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: invalid YAML: {problem}"], path) from None
    return parse(data, source=path)
