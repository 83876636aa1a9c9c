"""Client users and what they may do, in Redis ACL rule syntax.

A :class:`User` is compiled once, when the topology is loaded or reloaded, from its name, its
passwords (plain, or ``#<sha256 hex>`` as Redis's ACL stores them) and its rules, applied left
to right as ``ACL SETUSER`` applies them::

    on | off                       enabled or not (a new user is off)
    nopass | resetpass             any password works | no password works (until one is added)
    >password  <password           add / remove a password
    #<sha256>  !<sha256>           add / remove a password by its SHA-256
    +@category  -@category         every command of the category (+@all, -@all)
    +command  -command             a command and all its subcommands
    +command|sub  -command|sub     one subcommand
    allcommands | nocommands       +@all | -@all
    ~pattern  %R~pattern  %W~pattern  %RW~pattern   keys (read and write, read, write)
    allkeys | resetkeys            ~* | no keys
    &pattern  allchannels  resetchannels           pub/sub channels (a new user has none)
    reset                          resetpass resetkeys resetchannels off -@all

What a session does with it (``session/client.py``): a user allowed everything (``+@all``,
every key, every channel) gets the proxy's own command table and nothing is checked per
request; any other user gets a copy of the table with the single-key fast path off, and
:meth:`User.refusal` checks each request (its command, then its keys against the patterns,
then its channels) after the unknown-command and arity checks, as Redis orders them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from shardproxy.commands.table import CommandSpec, arity_ok, get_keys, iter_specs
from shardproxy.protocol import glob

NOPERM_COMMAND: Final = b"-NOPERM this user has no permissions to run the '%s' command\r\n"
NOPERM_KEY: Final = (
    b"-NOPERM this user has no permissions to access one of the keys used as arguments\r\n"
)
NOPERM_CHANNEL: Final = (
    b"-NOPERM this user has no permissions to access one of the channels used as arguments\r\n"
)
NOAUTH: Final = b"-NOAUTH Authentication required.\r\n"

#: commands whose arguments are channels (argv[1:] or argv[1]); patterns for PSUBSCRIBE
_CHANNEL_ARGS: Final = {
    "subscribe": (1, False),
    "ssubscribe": (1, False),
    "psubscribe": (1, True),
    "publish": (1, False),
    "spublish": (1, False),
}


#: ACL CAT, in Redis's order
CATEGORIES: Final = (
    "keyspace", "read", "write", "set", "sortedset", "list", "hash", "string", "bitmap",
    "hyperloglog", "geo", "stream", "pubsub", "admin", "fast", "slow", "blocking", "dangerous",
    "connection", "transaction", "scripting",
)  # fmt: skip


def category_commands(name: str) -> list[str] | None:
    """ACL CAT <category>: its commands and subcommands; None for an unknown category."""
    if name not in CATEGORIES:
        return None
    return [s.name for s in iter_specs() if "@" + name in s.acl_categories]


class AclError(ValueError):
    """A rule that is not Redis ACL syntax (the message names it)."""


def digest(password: bytes) -> bytes:
    return hashlib.sha256(password).digest()


def _all_names() -> frozenset[str]:
    return frozenset(s.name for s in iter_specs())


_ALL: Final = _all_names()
_BY_NAME: Final = {s.name: s for s in iter_specs()}
_CATEGORIES: Final = frozenset(c[1:] for s in iter_specs() for c in s.acl_categories)


def _category(name: str) -> frozenset[str]:
    if name == "all":
        return _ALL
    if name not in _CATEGORIES:
        raise AclError(f"unknown command category '@{name}'")
    return frozenset(s.name for s in iter_specs() if "@" + name in s.acl_categories)


def _command(name: str) -> frozenset[str]:
    spec = _BY_NAME.get(name)
    if spec is None:
        raise AclError(f"unknown command '{name}'")
    names = {spec.name}
    if spec.subcommands:
        names.update(sub.name for sub in spec.subcommands.values())
    return frozenset(names)


@dataclass(frozen=True, eq=False)
class User:
    """One client user, compiled."""

    name: str
    enabled: bool
    nopass: bool
    hashes: frozenset[bytes]  # SHA-256 digests of its passwords
    commands: frozenset[str]  # the command and subcommand names it may run
    read_keys: tuple[bytes, ...] | None  # None: every key
    write_keys: tuple[bytes, ...] | None
    channels: tuple[bytes, ...] | None  # None: every channel
    unauthenticated: bool = False  # the pseudo-user of a client that has not said AUTH yet

    @property
    def unrestricted(self) -> bool:
        """Allowed every command, key and channel: nothing to check per request."""
        return (
            self.commands == _ALL
            and self.read_keys is None
            and self.write_keys is None
            and self.channels is None
            and not self.unauthenticated
        )

    def authenticates(self, password: bytes) -> bool:
        """Whether ``password`` is one of the user's (in constant time per password)."""
        if not self.enabled:
            return False
        if self.nopass:
            return True
        given = digest(password)
        ok = False
        for h in self.hashes:
            ok |= hmac.compare_digest(h, given)
        return ok

    def refusal(self, spec: CommandSpec, argv: Sequence[bytes]) -> bytes | None:
        """The error that refuses this request, or None. Unknown commands, unknown
        subcommands and wrong arity are not refused here: they get their own errors."""
        if not arity_ok(spec, len(argv)):
            return None
        if spec.subcommands and len(argv) >= 2:
            sub = spec.subcommands.get(argv[1].lower())
            if sub is None:
                return None
            if not arity_ok(sub, len(argv)):
                return None
            spec = sub
        if self.unauthenticated:
            return None if "no_auth" in spec.flags else NOAUTH
        if spec.name not in self.commands and "no_auth" not in spec.flags:
            return NOPERM_COMMAND % spec.name.encode()
        if (self.read_keys is not None or self.write_keys is not None) and spec.has_keys:
            for i in get_keys(spec, argv):
                if not self.may_key(argv[i], spec):
                    return NOPERM_KEY
        if self.channels is not None:
            channel = _CHANNEL_ARGS.get(spec.name)
            if channel is not None:
                first, patterns = channel
                names = argv[first:] if spec.name.endswith("subscribe") else argv[first : first + 1]
                for name in names:
                    if not self.may_channel(name, patterns):
                        return NOPERM_CHANNEL
        return None

    def may_key(self, key: bytes, spec: CommandSpec) -> bool:
        """Read commands need a read pattern, writes a write pattern (and a read one when
        they also read the key, as Redis's key specs say)."""
        if spec.write:
            if not _matches(self.write_keys, key):
                return False
            reads = any("RW" in ks.flags or "access" in ks.flags for ks in spec.key_specs)
            return not reads or _matches(self.read_keys, key)
        return _matches(self.read_keys, key)

    def may_channel(self, name: bytes, pattern: bool) -> bool:
        """A channel must match an allowed pattern; a PSUBSCRIBE pattern must be one of them
        literally (as Redis checks it)."""
        allowed = self.channels
        if allowed is None:
            return True
        if pattern:
            return name in allowed
        return any(glob.match(p, name) for p in allowed)

    def table(self, base: dict[bytes, CommandSpec]) -> dict[bytes, CommandSpec]:
        """The lookup table a session of this user uses: ``base`` itself when nothing is
        checked, else a copy without the single-key fast path (every request then goes
        through dispatch, where :meth:`refusal` is asked)."""
        if self.unrestricted:
            return base
        return {k: _slow(spec) for k, spec in base.items()}


def _slow(spec: CommandSpec) -> CommandSpec:
    return dataclasses.replace(spec, single_key=False) if spec.single_key else spec


def _matches(patterns: tuple[bytes, ...] | None, key: bytes) -> bool:
    if patterns is None:
        return True
    return any(glob.match(p, key) for p in patterns)


def compile_user(name: str, rules: str, passwords: Sequence[str] = ()) -> User:
    """A user from its rules (Redis ACL syntax) and its passwords; AclError names a bad rule."""
    enabled = False
    nopass = False
    hashes: set[bytes] = set()
    commands: set[str] = set()
    read: list[bytes] | None = []
    write: list[bytes] | None = []
    channels: list[bytes] | None = []
    for p in passwords:
        hashes.add(_password_hash(p))
    for rule in rules.split():
        low = rule.lower()
        if low == "on":
            enabled = True
        elif low == "off":
            enabled = False
        elif low == "nopass":
            nopass, hashes = True, set()
        elif low == "resetpass":
            nopass, hashes = False, set()
        elif rule.startswith(">"):
            hashes.add(digest(rule[1:].encode()))
            nopass = False
        elif rule.startswith("<"):
            hashes.discard(digest(rule[1:].encode()))
        elif rule.startswith("#"):
            hashes.add(_password_hash(rule))
            nopass = False
        elif rule.startswith("!"):
            hashes.discard(_password_hash("#" + rule[1:]))
        elif low in ("allcommands", "+@all"):
            commands = set(_ALL)
        elif low in ("nocommands", "-@all"):
            commands = set()
        elif rule.startswith(("+@", "-@")):
            names = _category(low[2:])
            if rule[0] == "+":
                commands |= names
            else:
                commands -= names
        elif rule.startswith(("+", "-")):
            cmd = low[1:]
            names = _command(cmd) if "|" not in cmd else _subcommand(cmd)
            if rule[0] == "+":
                commands |= names
            else:
                commands -= names
        elif low == "allkeys":
            read = write = None
        elif low == "resetkeys":
            read, write = [], []
        elif rule.startswith("~") or rule.startswith("%"):
            perms, pattern = _key_rule(rule)
            if "R" in perms and read is not None:
                read.append(pattern)
            if "W" in perms and write is not None:
                write.append(pattern)
        elif low == "allchannels":
            channels = None
        elif low == "resetchannels":
            channels = []
        elif rule.startswith("&"):
            if channels is not None:
                if rule == "&*":
                    channels = None
                else:
                    channels.append(rule[1:].encode())
        elif low == "reset":
            enabled, nopass, hashes, commands = False, False, set(), set()
            read, write, channels = [], [], []
        else:
            raise AclError(f"unknown ACL rule '{rule}'")
    return User(
        name=name,
        enabled=enabled,
        nopass=nopass,
        hashes=frozenset(hashes),
        commands=frozenset(commands),
        read_keys=_keys(read),
        write_keys=_keys(write),
        channels=None if channels is None else tuple(channels),
    )


def _keys(patterns: list[bytes] | None) -> tuple[bytes, ...] | None:
    if patterns is None or b"*" in patterns:
        return None
    return tuple(patterns)


def _subcommand(name: str) -> frozenset[str]:
    if name not in _BY_NAME:
        raise AclError(f"unknown subcommand '{name}'")
    return frozenset({name})


def _key_rule(rule: str) -> tuple[str, bytes]:
    if rule.startswith("~"):
        return "RW", rule[1:].encode()
    perms, sep, pattern = rule[1:].partition("~")
    if not sep or not perms or set(perms.upper()) - {"R", "W"}:
        raise AclError(f"bad key permission rule '{rule}' (%R~, %W~ or %RW~ then a pattern)")
    return perms.upper(), pattern.encode()


def _password_hash(text: str) -> bytes:
    """A password as the config gives it: ``#`` and 64 hex digits is a SHA-256, else plain."""
    if text.startswith("#"):
        hexa = text[1:]
        if len(hexa) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hexa):
            raise AclError("a password hash is '#' and 64 hex digits (SHA-256)")
        return bytes.fromhex(hexa)
    return digest(text.encode())


#: every command, key and channel: the default user without client authentication
UNRESTRICTED: Final = User("default", True, True, frozenset(), _ALL, None, None, None)
#: a client that has not authenticated yet, when authentication is required
UNAUTHENTICATED: Final = User(
    "(unauthenticated)", False, False, frozenset(), frozenset(), None, None, None, True
)


def default_user(password: str | None) -> User:
    """``auth.password`` makes the default user require it (Redis's requirepass); without
    one, the default user is off when named users exist (one must AUTH as one of them)."""
    if password is None:
        return User("default", False, False, frozenset(), _ALL, None, None, None)
    return User(
        "default", True, False, frozenset({digest(password.encode())}), _ALL, None, None, None
    )


class Users:
    """Every client user of the proxy, compiled, with the lookup table each one's sessions
    use (built once here, not per connection)."""

    def __init__(self, users: Sequence[User], required: bool, base: dict[bytes, CommandSpec]):
        self.required = required  # False: no client authentication configured
        self.by_name: dict[str, User] = {u.name: u for u in users}
        if "default" not in self.by_name:
            self.by_name["default"] = UNRESTRICTED if not required else default_user(None)
        self._tables: dict[str, dict[bytes, CommandSpec]] = {}
        self.base = base
        self._unauthenticated = UNAUTHENTICATED.table(base)

    @property
    def initial(self) -> User:
        """A new connection's user: default when it needs no password (as Redis), else none."""
        default = self.by_name["default"]
        if default.enabled and default.nopass:
            return default
        return UNAUTHENTICATED

    def table(self, user: User) -> dict[bytes, CommandSpec]:
        if user.unauthenticated:
            return self._unauthenticated
        t = self._tables.get(user.name)
        if t is None:
            t = user.table(self.base)
            self._tables[user.name] = t
        return t

    def check(self, name: bytes, password: bytes) -> User | None:
        """The user ``name`` if ``password`` is one of its passwords (and it is on)."""
        user = self.by_name.get(name.decode("utf-8", "replace"))
        if user is None:
            digest(password)  # (the same work whether or not the user exists)
            return None
        return user if user.authenticates(password) else None


def compile_users(
    password: str | None,
    users: Sequence[tuple[str, Sequence[str], str]],
    base: dict[bytes, CommandSpec],
) -> Users:
    """The proxy's users from ``auth``: ``password`` for the default user, ``users`` as
    (name, passwords, rules). AclError names the user and the rule at fault."""
    compiled: list[User] = []
    for name, passwords, rules in users:
        try:
            compiled.append(compile_user(name, rules, passwords))
        except AclError as exc:
            raise AclError(f"user {name!r}: {exc}") from None
    if password is not None:
        compiled.append(default_user(password))
    return Users(compiled, password is not None or bool(users), base)
