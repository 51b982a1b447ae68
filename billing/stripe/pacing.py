"""Pacing of Stripe requests (issue 10): one rate limit shared by every worker on every
machine, so that a billing run's 50,000 requests stay under Stripe's own limit (about 100
operations per second live, 25 in test mode, reads and writes counted apart).

- A GCRA ("generic cell rate algorithm", a token bucket kept as one timestamp) in Redis,
  one atomic Lua script, clocked by Redis' own TIME so every machine shares one clock.
  Buckets are per Stripe account and mode (a hash of the secret key; never the key) and
  per kind (`read` = GET, `write` = everything else). A caller *reserves* the next free
  slot and sleeps until it: callers queue in order, nobody polls.
- Then, right before sending, the request is *confirmed* against a sliding log of the
  last second's sends (a Redis sorted set, the same script style): at most `rate` requests
  in any 1.05 s window, whatever the scheduler did to the sleepers. GCRA spaces the requests;
  the log makes the promise hold when a late waker and an on-time one would bunch up.
- A caller waits at most `STRIPE_RATE_LIMIT_MAX_WAIT_SECONDS` for its slot; when the next
  free slot is further away, nothing is reserved and `SlotUnavailable` is raised (the
  gateway turns it into a transient error, which the push's retry path handles).
- Without Redis (the development default: SQLite and the filesystem broker) each process
  paces itself with the same algorithm in memory: right on one box with one worker.
- Redis unreachable: fail open to the in-process limiter (each process keeps its own pace;
  Stripe's 429s, which the gateway backs off from, are the backstop), one warning per
  outage, and the `billing_stripe_pacing_fail_open_total` counter; Redis is tried again
  after `FAIL_OPEN_COOL_OFF` seconds.
- `hold()` pushes a bucket's next slot away for everyone: the gateway calls it when Stripe
  answers 429, so every worker slows down, not only the one that was refused.

No Stripe here (billing/stripe/gateway.py is the only module that imports `stripe`)."""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

import redis
from django.conf import settings
from prometheus_client import Counter

logger = logging.getLogger("billing.stripe.pacing")

READ = "read"
WRITE = "write"
KINDS = (READ, WRITE)
BURST = 1  # requests let through back to back: 1 keeps every 1 s window at or under the rate
# Slots are spaced 5% wider than the rate says, and each send is confirmed against the
# sends of the last 1.05 s: between its confirmation and Stripe a request spends a varying
# few milliseconds (a thread descheduled, the network), and an exact 1 s schedule would let
# that jitter put rate + 1 requests into some 1 s window at Stripe's end. With the margin
# it takes more than 50 ms of jitter; the cost is 5% of the throughput.
MARGIN = 0.05
WINDOW = 1.0 + MARGIN  # seconds of the sliding log each send is confirmed against
FAIL_OPEN_COOL_OFF = 5.0  # seconds without trying Redis after it failed
REDIS_TIMEOUT = 0.5  # seconds: a Redis that does not answer costs a Stripe call at most this
KEY_PREFIX = "stripe-pace"

FAIL_OPEN = Counter(
    "billing_stripe_pacing_fail_open",
    "Stripe request slots taken from the in-process limiter because Redis did not answer.",
)
REFUSED = Counter(
    "billing_stripe_pacing_refused",
    "Stripe requests not sent because their slot was further away than the longest wait.",
    ["kind"],
)
RATE_LIMITED = Counter(
    "billing_stripe_rate_limited",
    "429 answers from Stripe: retried here, given up (a transient error), or not retried (Stripe-Should-Retry: false).",
    ["kind", "outcome"],
)
WAITED = Counter("billing_stripe_pacing_wait_seconds", "Seconds Stripe requests waited for their slot.", ["kind"])

# KEYS[1]: the bucket. ARGV: the emission interval, the burst tolerance and the longest
# acceptable wait, in microseconds. The bucket holds its theoretical arrival time (TAT).
# Returns {1, wait}: the slot is reserved, start in `wait` µs; {0, wait}: too far, nothing
# reserved. Numbers are Lua doubles: µs since 1970 (~1.8e15) are exact below 2^53.
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tonumber(ARGV[2]) - now
if wait < 0 then wait = 0 end
if wait > tonumber(ARGV[3]) then return {0, wait} end
local new_tat = tat + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, wait}
"""

# KEYS[1]: the bucket's log of sends (a sorted set scored in µs); ARGV: the window (µs),
# the requests allowed in it, a unique member. Returns 0: recorded, send now; else the µs
# until the oldest send leaves the window.
CONFIRM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""

# KEYS[1]: the bucket; ARGV[1]: µs from now before anyone's next slot (never earlier than
# the slots already reserved).
HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local until_ = now + tonumber(ARGV[1])
if until_ > tat then
  redis.call('SET', KEYS[1], string.format('%.0f', until_), 'PX', math.ceil((until_ - now) / 1000) + 1000)
end
return 1
"""


class SlotUnavailable(Exception):
    """The next free slot is further away than the longest wait; nothing was reserved."""

    def __init__(self, kind: str, max_wait: float) -> None:
        super().__init__(
            f"Stripe {kind} rate limit: no slot within {max_wait:g} s (STRIPE_RATE_LIMIT_MAX_WAIT_SECONDS)"
        )
        self.kind = kind
        self.max_wait = max_wait


@dataclass(frozen=True)
class Budget:
    """One bucket: its name and its rate (requests per second)."""

    bucket: str
    rate: float

    @property
    def interval(self) -> float:
        return (1.0 + MARGIN) / self.rate

    @property
    def per_window(self) -> int:
        """Requests allowed in any 1 s window (at least one)."""
        return max(1, int(self.rate))


class LocalLimiter:
    """The same GCRA in this process' memory (monotonic clock): one box, one pace."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}
        self._sent: dict[str, deque[float]] = {}

    def reserve(self, budget: Budget, max_wait: float) -> float | None:
        with self._lock:
            now = time.monotonic()
            tat = max(self._tat.get(budget.bucket, now), now)
            wait = max(tat - budget.interval * (BURST - 1) - now, 0.0)
            if wait > max_wait:
                return None
            self._tat[budget.bucket] = tat + budget.interval
            return wait

    def confirm(self, budget: Budget) -> float:
        with self._lock:
            now = time.monotonic()
            sent = self._sent.setdefault(budget.bucket, deque())
            while sent and sent[0] <= now - WINDOW:
                sent.popleft()
            if len(sent) < budget.per_window:
                sent.append(now)
                return 0.0
            return max(sent[0] + WINDOW - now, 1e-6)

    def hold(self, budget: Budget, seconds: float) -> None:
        with self._lock:
            until = time.monotonic() + seconds
            if until > self._tat.get(budget.bucket, 0.0):
                self._tat[budget.bucket] = until


class RedisLimiter:
    """The shared limiter; falls back to `fallback` (in-process) while Redis fails."""

    def __init__(self, url: str, fallback: LocalLimiter) -> None:
        self.url = url
        self.fallback = fallback
        self._client = redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT, health_check_interval=30
        )
        self._reserve = self._client.register_script(RESERVE)
        self._confirm = self._client.register_script(CONFIRM)
        self._hold = self._client.register_script(HOLD)
        self._down_until = 0.0
        self._lock = threading.Lock()

    def _usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            first = self._down_until == 0.0
            self._down_until = time.monotonic() + FAIL_OPEN_COOL_OFF
        if first:
            logger.warning(
                "Stripe pacing: Redis at %s did not answer (%s); failing open to this process' own limiter "
                "(Stripe's 429s are the backstop) until it answers again",
                _redacted(self.url),
                type(exc).__name__,
            )

    def _answered(self) -> None:
        if self._down_until:
            with self._lock:
                self._down_until = 0.0
            logger.warning("Stripe pacing: Redis at %s answers again; pacing is shared again", _redacted(self.url))

    def reserve(self, budget: Budget, max_wait: float) -> float | None:
        if self._usable():
            args = [round(budget.interval * 1e6), round(budget.interval * (BURST - 1) * 1e6), round(max_wait * 1e6)]
            try:
                granted, wait_us = self._reserve(keys=[budget.bucket], args=args)
            except redis.RedisError as exc:
                self._failed(exc)
            else:
                self._answered()
                return int(wait_us) / 1e6 if int(granted) else None
        FAIL_OPEN.inc()
        return self.fallback.reserve(budget, max_wait)

    def confirm(self, budget: Budget) -> float:
        if self._usable():
            args: list[str | int] = [round(WINDOW * 1e6), budget.per_window, secrets.token_hex(8)]
            try:
                wait_us = self._confirm(keys=[f"{budget.bucket}:sent"], args=args)
            except redis.RedisError as exc:
                self._failed(exc)
            else:
                self._answered()
                return int(wait_us) / 1e6
        return self.fallback.confirm(budget)  # counted once per request, by `reserve`

    def hold(self, budget: Budget, seconds: float) -> None:
        self.fallback.hold(budget, seconds)
        if self._usable():
            try:
                self._hold(keys=[budget.bucket], args=[round(seconds * 1e6)])
            except redis.RedisError as exc:
                self._failed(exc)


def _redacted(url: str) -> str:
    """A Redis URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://…@{rest.rpartition('@')[2]}"


_local = LocalLimiter()
_shared: dict[str, RedisLimiter] = {}
_shared_lock = threading.Lock()


def limiter() -> LocalLimiter | RedisLimiter:
    """The limiter the settings name: Redis when `STRIPE_RATE_LIMIT_REDIS_URL` is set (one
    client per URL and process), else this process' own."""
    url = settings.STRIPE_RATE_LIMIT_REDIS_URL
    if not url:
        return _local
    found = _shared.get(url)
    if found is None:
        with _shared_lock:
            found = _shared.get(url) or _shared.setdefault(url, RedisLimiter(url, _local))
    return found


def account_scope(secret_key: str) -> str:
    """`live:<hash>` or `test:<hash>`: Stripe limits per account and mode; the key names
    both (a hash of it, never the key itself)."""
    mode = "live" if secret_key.startswith(("sk_live_", "rk_live_")) else "test"
    return f"{mode}:{hashlib.sha256(secret_key.encode()).hexdigest()[:16]}"


def budget(kind: str) -> Budget:
    """The bucket and rate of `kind` (`read` or `write`) for the configured account."""
    rate = settings.STRIPE_READ_RATE_PER_SECOND if kind == READ else settings.STRIPE_WRITE_RATE_PER_SECOND
    return Budget(bucket=f"{KEY_PREFIX}:{account_scope(settings.STRIPE_SECRET_KEY)}:{kind}", rate=float(rate))


def kind_of(method: str) -> str:
    return READ if method.upper() in ("GET", "HEAD") else WRITE


def acquire(kind: str) -> float:
    """Wait for this request's slot, then confirm it against the last second's sends; the
    seconds waited. Raises SlotUnavailable when the slot is further away than
    STRIPE_RATE_LIMIT_MAX_WAIT_SECONDS (nothing reserved), or the confirmation keeps
    failing past that wait (and a second)."""
    if not settings.STRIPE_RATE_LIMIT_ENABLED:
        return 0.0
    wanted = budget(kind)
    max_wait = float(settings.STRIPE_RATE_LIMIT_MAX_WAIT_SECONDS)
    chosen = limiter()
    started = time.monotonic()
    wait = chosen.reserve(wanted, max_wait)
    if wait is None:
        REFUSED.labels(kind=kind).inc()
        raise SlotUnavailable(kind, max_wait)
    if wait > 0:
        time.sleep(wait)
    while (more := chosen.confirm(wanted)) > 0:
        if time.monotonic() + more - started > max_wait + WINDOW:
            REFUSED.labels(kind=kind).inc()
            raise SlotUnavailable(kind, max_wait)
        time.sleep(more)
        wait += more
    if wait > 0:
        WAITED.labels(kind=kind).inc(wait)
    return wait


def hold(kind: str, seconds: float) -> None:
    """Nobody's next `kind` request for this account starts within `seconds` (Stripe said
    429: every worker slows down)."""
    if settings.STRIPE_RATE_LIMIT_ENABLED and seconds > 0:
        limiter().hold(budget(kind), seconds)


def reset_for_tests() -> None:
    """Forget this process' in-memory buckets and clients (tests change the settings)."""
    with _shared_lock:
        _shared.clear()
    with _local._lock:
        _local._tat.clear()
        _local._sent.clear()
