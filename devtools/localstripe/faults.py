"""Fault injection and a request log, for tests: what localstripe cannot do by itself —
answer 429 (Stripe's rate limit) with chosen headers — and when each request arrived.

    POST   /_config/faults    {"count": 3, "status": 429, "headers": {"Retry-After": "1"},
                               "method": "POST", "path": "^/v1/invoices$", "skip": 10}
    GET    /_config/faults    the rules not used up yet
    DELETE /_config/faults    forget them all
    GET    /_config/requests  every /v1 request so far: arrival time, method, path, status,
                              Idempotency-Key, whether it was faulted or replayed (`?since=N`
                              skips the first N)
    DELETE /_config/requests  empty the log

A rule makes the next `count` requests that match it (`method`, and `path` as a regular
expression searched in the path; both optional) answer `status` (default 429) with
Stripe's error body (`code`, default `rate_limit`) and `headers` (e.g. `Retry-After`,
`Stripe-Should-Retry`), after letting `skip` matching requests through. Rules apply in the
order they were posted. A faulted request never reaches localstripe: nothing is created
and its Idempotency-Key stays unused, as with Stripe's own rate limiter. Everything here
is in memory, per process; under `/_config/`, like localstripe's own webhook settings,
so it needs no API key. Real Stripe has none of it.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from devtools.localstripe.common import Handler

FAULTS_PATH = "/_config/faults"
REQUESTS_PATH = "/_config/requests"
LOG_SIZE = 200_000

MESSAGES = {
    429: "Request rate limit exceeded. You can learn more about rate limits here https://stripe.com/docs/rate-limits.",
}


@dataclass
class Rule:
    count: int = 1
    status: int = 429
    headers: dict[str, str] = field(default_factory=dict)
    method: str | None = None
    path: str | None = None
    skip: int = 0
    code: str | None = None
    message: str | None = None

    def matches(self, request: web.Request) -> bool:
        if self.method and request.method.upper() != self.method.upper():
            return False
        return not self.path or re.search(self.path, request.path) is not None


@dataclass(frozen=True)
class Entry:
    t: float  # seconds since 1970, when the request arrived
    method: str
    path: str
    status: int
    idempotency_key: str | None
    faulted: bool
    replayed: bool


_lock = threading.Lock()
_rules: list[Rule] = []
_log: deque[Entry] = deque(maxlen=LOG_SIZE)
_logged = 0  # entries ever logged (the `since` index survives the deque dropping old ones)


def _take(request: web.Request) -> Rule | None:
    """The rule that faults this request, if any (its count and skip consumed)."""
    with _lock:
        for rule in _rules:
            if rule.count <= 0 or not rule.matches(request):
                continue
            if rule.skip > 0:
                rule.skip -= 1
                return None
            rule.count -= 1
            if rule.count == 0:
                _rules.remove(rule)
            return rule
    return None


def _fault_response(rule: Rule) -> web.Response:
    code = rule.code or ("rate_limit" if rule.status == 429 else None)
    error: dict[str, Any] = {
        "type": "invalid_request_error" if rule.status < 500 else "api_error",
        "message": rule.message or MESSAGES.get(rule.status, f"Injected fault ({rule.status})."),
    }
    if code:
        error["code"] = code
    response = web.json_response({"error": error}, status=rule.status)
    response.headers["Request-Id"] = "req_" + secrets.token_hex(7)
    for name, value in rule.headers.items():
        response.headers[name] = str(value)
    return response


def _record(request: web.Request, arrived: float, status: int, *, faulted: bool, replayed: bool) -> None:
    global _logged
    entry = Entry(
        t=arrived,
        method=request.method,
        path=request.path,
        status=status,
        idempotency_key=request.headers.get("Idempotency-Key"),
        faulted=faulted,
        replayed=replayed,
    )
    with _lock:
        _log.append(entry)
        _logged += 1


async def _rule_from(request: web.Request) -> Rule:
    raw = await request.read()
    if request.content_type == "application/json":
        data = json.loads(raw or b"{}")
    else:
        posted = await request.post()
        data = {k: v for k, v in posted.items() if not k.startswith("headers[")}
        data["headers"] = {k[len("headers[") : -1]: v for k, v in posted.items() if k.startswith("headers[")}
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="a JSON object is expected")
    try:
        rule = Rule(
            count=int(data.get("count", 1)),
            status=int(data.get("status", 429)),
            headers={str(k): str(v) for k, v in dict(data.get("headers") or {}).items()},
            method=data.get("method") or None,
            path=data.get("path") or None,
            skip=int(data.get("skip", 0)),
            code=data.get("code") or None,
            message=data.get("message") or None,
        )
        if rule.path:
            re.compile(rule.path)
    except (TypeError, ValueError, re.error) as exc:
        raise web.HTTPBadRequest(text=f"bad fault rule: {exc}") from exc
    if rule.count < 1 or not 400 <= rule.status <= 599 or rule.skip < 0:
        raise web.HTTPBadRequest(text="count ≥ 1, 400 ≤ status ≤ 599 and skip ≥ 0 are required")
    return rule


async def _configure(request: web.Request) -> web.StreamResponse:
    global _logged
    if request.path == FAULTS_PATH:
        if request.method == "POST":
            rule = await _rule_from(request)
            with _lock:
                _rules.append(rule)
        elif request.method == "DELETE":
            with _lock:
                _rules.clear()
        elif request.method != "GET":
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST", "DELETE"])
        with _lock:
            return web.json_response({"faults": [asdict(r) for r in _rules]})
    if request.method == "DELETE":
        with _lock:
            _log.clear()
            _logged = 0
        return web.json_response({"data": []})
    if request.method != "GET":
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "DELETE"])
    since = int(request.query.get("since", "0"))
    with _lock:
        first = _logged - len(_log)  # index of the oldest entry still kept
        entries = [asdict(e) for i, e in enumerate(_log, start=first) if i >= since]
        total = _logged
    return web.json_response({"data": entries, "total": total})


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """First of all middlewares: the configuration endpoints, then a faulted answer for a
    request a rule matches (before idempotency, so its key stays unused), and the log."""
    if request.path in (FAULTS_PATH, REQUESTS_PATH):
        return await _configure(request)
    if request.path.startswith("/_config/"):
        return await handler(request)
    arrived = time.time()
    rule = _take(request)
    if rule is not None:
        _record(request, arrived, rule.status, faulted=True, replayed=False)
        return _fault_response(rule)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _record(request, arrived, exc.status, faulted=False, replayed=False)
        raise
    replayed = response.headers.get("Idempotent-Replayed") == "true"
    _record(request, arrived, response.status, faulted=False, replayed=replayed)
    return response
