"""A shop form's protections, decided without I/O: the client's IP behind trusted proxies, the
origin check, HMAC signatures of server-to-server posts, and the two in-memory guards (rate
limit, replay cache), which keep state but do no I/O."""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Sequence

from gatewayd.config import Form

SIGNATURE_HEADER = "x-gatewayd-signature"
TIMESTAMP_HEADER = "x-gatewayd-timestamp"
MAX_STAMP_DIGITS = 12  # Unix seconds until the year 33658

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=64)
def _networks(trusted: tuple[str, ...]) -> tuple[_Network, ...]:
    """The trusted proxies as networks, parsed once per configuration, not per request."""
    return tuple(ipaddress.ip_network(t, strict=False) for t in trusted)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: Sequence[str]) -> str:
    """The client's IP: X-Forwarded-For is believed only when the peer is a trusted proxy, and
    then read from the right, skipping further trusted proxies."""
    networks = _networks(tuple(trusted))

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in networks)

    current = peer or "unknown"
    if not forwarded_for or not is_trusted(current):
        return current
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return current  # a garbled entry: trust nothing further left
        current = hop
        if not is_trusted(hop):
            return hop
    return current


def origin_problem(form: Form, origin: str | None, fetch_site: str | None,
                   own_origin: str) -> str | None:
    """None when a browser post may come from there. Requests without Origin and
    Sec-Fetch-Site are not from a browser's cross-site form (server-to-server, curl)."""
    allowed = {o.rstrip("/").lower() for o in form.allowed_origins} | {own_origin.lower()}
    if origin is not None:
        if origin.rstrip("/").lower() in allowed:
            return None
        return f"posts from {origin} are not accepted (forms.allowed_origins)"
    if fetch_site in (None, "same-origin", "none"):
        return None
    return f"a {fetch_site} post without an Origin header is not accepted"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature a server-to-server client sends: hex HMAC-SHA256 of `timestamp.` + body."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signature_problem(secret: str, timestamp: str | None, signature: str | None, body: bytes,
                      now: float, tolerance: int) -> str | None:
    if not timestamp or not signature:
        return (f"this form needs a signature: send {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} "
                "(sha256=hex HMAC of 'timestamp.' + body)")
    # Digits only, and few enough to compare with the clock (int() would also take '1_000',
    # ' 12' or '²', and a float comparison with a 400-digit number raises OverflowError).
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= MAX_STAMP_DIGITS):
        return f"{TIMESTAMP_HEADER} must be Unix seconds"
    if abs(now - int(timestamp)) > tolerance:
        return f"the timestamp is more than {tolerance} s away from the server's clock"
    if not hmac.compare_digest(sign(secret, timestamp, body).encode(),
                               signature.strip().lower().encode()):
        return "the signature does not match"
    return None


class RateLimiter:
    """Sliding-window counter per key (form, client IP), in memory, bounded in size."""

    def __init__(self, max_keys: int = 100_000):
        self._hits: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._max_keys = max_keys

    def allow(self, key: tuple[str, str], limit: int, window: float,
              now: float | None = None) -> bool:
        if limit <= 0:
            return True
        now = time.monotonic() if now is None else now
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
            while len(self._hits) > self._max_keys:
                self._hits.popitem(last=False)
        else:
            self._hits.move_to_end(key)
        while hits and hits[0] <= now - window:
            hits.popleft()
        if len(hits) >= limit:
            return False
        hits.append(now)
        return True


class ReplayCache:
    """Signatures seen within the tolerance window; a second use is a replay."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def first_use(self, signature: str, now: float, ttl: float) -> bool:
        if len(self._seen) > 10_000:
            self._seen = {k: t for k, t in self._seen.items() if t > now}
        key = signature.strip().lower()
        expires = self._seen.get(key)
        if expires is not None and expires > now:
            return False
        self._seen[key] = now + ttl
        return True


