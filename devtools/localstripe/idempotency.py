"""HTTP: the endpoint wrapper, the ``Request-Id`` and request context middleware, and
Stripe's idempotency-key replay on every POST, scoped per API key.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from localstripe import resources as ls
from localstripe import server

from devtools.localstripe.common import Data, Endpoint, Handler, _error, _idempotency_key, _request_id, _stripe_version

IDEMPOTENCY_TTL = 24 * 3600  # Stripe keeps keys at least 24 hours
IDEMPOTENCY_KEY_MAX_LENGTH = 255
IDEMPOTENCY_PREFIX = "_idempotency:"  # store keys; never starts like "<object>:"

_in_flight: set[str] = set()


def _endpoint(fn: Endpoint) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            posted = await server.get_post_data(request)
            data: Data = dict(posted) if posted else {}
            query = server.unflatten_data(request.query)
            data.update(query or {})
        else:
            data = dict(server.unflatten_data(request.query) or {})
        expand = data.pop("expand", None)
        if expand is not None and not isinstance(expand, list):
            raise _error(400, "Invalid array", param="expand")
        result = fn(data, dict(request.match_info), expand)
        body = result._export(expand=expand) if hasattr(result, "_export") else result
        return server.json_response(body)

    return handle


@web.middleware
async def context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A ``Request-Id`` on every answer, the request's context for the events it causes,
    and Stripe's JSON error for an unknown URL."""
    request_id = "req_" + secrets.token_hex(7)
    _request_id.set(request_id)
    _idempotency_key.set(request.headers.get("Idempotency-Key"))
    _stripe_version.set(request.headers.get("Stripe-Version"))
    try:
        response = await handler(request)
    except web.HTTPNotFound:
        response = server.json_response(
            {
                "error": {
                    "type": "invalid_request_error",
                    "message": f"Unrecognized request URL ({request.method}: {request.path}).",
                }
            },
            status=404,
        )
    except web.HTTPMethodNotAllowed:
        response = server.json_response(
            {
                "error": {
                    "type": "invalid_request_error",
                    "message": f"Unrecognized request URL ({request.method}: {request.path}).",
                }
            },
            status=405,
        )
    response.headers["Request-Id"] = request_id
    return response


def _fingerprint(request: web.Request, body: bytes) -> str:
    """The request's parameters, independent of their order."""
    canonical: Any
    if request.content_type == "application/json" and body:
        try:
            canonical = json.loads(body)
        except ValueError:
            canonical = body.decode("utf-8", "replace")
    else:
        canonical = sorted(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    query = sorted(request.query.items())
    text = json.dumps([request.method, request.path, canonical, query], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _idempotency_error(status: int, message: str, **fields: Any) -> web.Response:
    error = {"type": "idempotency_error", "message": message, **fields}
    return server.json_response({"error": error}, status=status)


def _purge_idempotency(now: float) -> None:
    expired = [
        key
        for key, record in list(ls.store.items())
        if key.startswith(IDEMPOTENCY_PREFIX) and now - record["created"] > IDEMPOTENCY_TTL
    ]
    for key in expired:
        dict.__delitem__(ls.store, key)  # one dump for all, below
    if expired:
        ls.store.dump_to_disk()


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Stripe's idempotent requests: per API key, a POST with a key already used replays
    the first answer (status and body); other parameters or another endpoint → 400
    ``idempotency_error``; the same key still in flight → 409. Saved are answers of
    requests that ran (2xx, and 402 card errors); 4xx validation errors are not."""
    key = request.headers.get("Idempotency-Key")
    api_key = server.get_api_key(request)
    if request.method != "POST" or key is None or api_key is None or not request.path.startswith("/v1/"):
        return await handler(request)
    if len(key) > IDEMPOTENCY_KEY_MAX_LENGTH:
        return server.json_response(
            {
                "error": {
                    "type": "invalid_request_error",
                    "message": f"Idempotency-Key must be at most {IDEMPOTENCY_KEY_MAX_LENGTH} characters long.",
                }
            },
            status=400,
        )
    body = await request.read()
    scope = hashlib.sha256(api_key.encode()).hexdigest()[:16]
    record_key = f"{IDEMPOTENCY_PREFIX}{scope}:{key}"
    endpoint = f"{request.method} {request.path}"
    fingerprint = _fingerprint(request, body)
    now = time.time()
    record = ls.store.get(record_key)
    if record is not None and now - record["created"] > IDEMPOTENCY_TTL:
        _purge_idempotency(now)
        record = None
    if record is not None:
        if record["endpoint"] != endpoint:
            return _idempotency_error(
                400,
                "Keys for idempotent requests can only be used for the same endpoint they were first used for "
                f"({record['endpoint']!r} vs {endpoint!r}). Try using a key other than {key!r} if you meant to "
                "execute a different request.",
            )
        if record["fingerprint"] != fingerprint:
            return _idempotency_error(
                400,
                "Keys for idempotent requests can only be used with the same parameters they were first used "
                f"with. Try using a key other than {key!r} if you meant to execute a different request.",
            )
        return web.Response(
            body=record["body"],
            status=record["status"],
            content_type="application/json",
            headers={"Idempotent-Replayed": "true", "Original-Request": record["request_id"]},
        )
    if record_key in _in_flight:
        return _idempotency_error(
            409,
            "There is currently another in-progress request using this Stripe-Idempotency-Key (that probably "
            f"means you submitted twice, and the other request is still going through): {key!r}. Please try "
            "again later.",
            code="idempotency_key_in_use",
        )
    _in_flight.add(record_key)
    try:
        response = await handler(request)
    finally:
        _in_flight.discard(record_key)
    if (200 <= response.status < 300 or response.status == 402) and isinstance(response, web.Response):
        content = response.body
        if isinstance(content, bytes):
            ls.store[record_key] = {
                "endpoint": endpoint,
                "fingerprint": fingerprint,
                "status": response.status,
                "body": content,
                "request_id": _request_id.get(),
                "created": now,
            }
    return response
