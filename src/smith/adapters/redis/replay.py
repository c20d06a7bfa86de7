"""Scripts that give the same answer when they run twice.

redis-py resends a command after a timeout (its ``Retry`` covers ``TimeoutError`` whatever ``retry_on_error``
says), so a script whose reply was lost in a stall runs a second time. Run twice, a state change would answer
differently (a CLAIM sees ``assigned`` and returns nothing; a cancel sees ``cancelled`` and says "already
finished"). ``replayable`` wraps a script so its first run stores its reply under a key unique to the call (the
last of KEYS, from ``reply_key``) for ``REPLY_TTL_SECONDS``; a replay with the same arguments finds it and returns
it unchanged without running the body again. The caller makes one token per logical call; redis-py's retries
resend the same arguments, so they carry the same token.
"""

from __future__ import annotations

import secrets

# Longer than redis-py's whole retry window (3 retries of a 5 s socket timeout plus back-off).
REPLY_TTL_SECONDS = 120


def replayable(body: str) -> str:
    """``body`` as a function whose reply is kept under ``KEYS[#KEYS]`` and returned again on a replay.

    The body's reply must survive a JSON round trip: strings, small integers, flat lists, ``false``."""
    return (
        "local kept = redis.call('GET', KEYS[#KEYS])\n"
        "if kept then return cjson.decode(kept) end\n"
        "local function body()\n"
        f"{body}\n"
        "end\n"
        "local out = body()\n"
        f"redis.call('SET', KEYS[#KEYS], cjson.encode(out), 'EX', {REPLY_TTL_SECONDS})\n"
        "return out\n"
    )


def token() -> str:
    """A fresh token for one logical script call."""
    return secrets.token_hex(12)
