"""Redis's glob-style patterns, matched as Redis matches them (``stringmatchlen``).

``*`` any run of bytes, ``?`` one byte, ``[abc]`` / ``[^abc]`` / ``[a-z]`` a class (a reversed
range matches too), ``\\x`` the byte x itself. Used where the proxy must know what a Redis
pattern matches without asking a node: a PUBLISH's receivers among the proxy's pattern
subscribers, ``PUBSUB CHANNELS pattern`` over the proxy's own channels.
"""

from __future__ import annotations


def match(pattern: bytes, string: bytes, nocase: bool = False) -> bool:
    """Whether ``string`` matches ``pattern`` (Redis's KEYS/PSUBSCRIBE semantics)."""
    if nocase:
        pattern, string = pattern.lower(), string.lower()
    return _match(pattern, 0, string, 0)


def _match(p: bytes, pi: int, s: bytes, si: int) -> bool:
    plen = len(p)
    slen = len(s)
    while pi < plen and si < slen:
        c = p[pi]
        if c == 42:  # '*'
            while pi + 1 < plen and p[pi + 1] == 42:
                pi += 1
            if pi + 1 == plen:
                return True  # a trailing star matches the rest
            for k in range(si, slen + 1):
                if _match(p, pi + 1, s, k):
                    return True
            return False
        if c == 63:  # '?'
            si += 1
            pi += 1
            continue
        if c == 91:  # '['
            pi += 1
            negate = pi < plen and p[pi] == 94  # '^'
            if negate:
                pi += 1
            found = False
            while pi < plen and p[pi] != 93:  # ']'
                if p[pi] == 92 and pi + 1 < plen:  # '\\' escapes inside a class
                    pi += 1
                    if p[pi] == s[si]:
                        found = True
                elif pi + 2 < plen and p[pi + 1] == 45:  # 'a-z'
                    lo, hi = p[pi], p[pi + 2]
                    if lo > hi:
                        lo, hi = hi, lo
                    if lo <= s[si] <= hi:
                        found = True
                    pi += 2
                elif p[pi] == s[si]:
                    found = True
                pi += 1
            if pi >= plen:
                pi = plen - 1  # an unterminated class ends at the pattern's end (as Redis)
            if negate:
                found = not found
            if not found:
                return False
            si += 1
            pi += 1
            continue
        if c == 92 and pi + 1 < plen:  # '\\x': x itself
            pi += 1
            c = p[pi]
        if c != s[si]:
            return False
        si += 1
        pi += 1
    if si < slen:
        return False
    while pi < plen and p[pi] == 42:
        pi += 1
    return pi == plen
