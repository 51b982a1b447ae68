"""Shared pieces: constants, types, the logger, the request's context, Stripe-style
errors and parameters, lists and pages.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web
from localstripe import resources as ls
from localstripe.errors import UserError

from devtools.localstripe.clock import now as clock_now

DEFAULT_CURRENCY = "usd"
ACCOUNT_NAME = "Local Stripe test account"
METADATA_MAX_KEYS = 50
METADATA_KEY_MAX_LENGTH = 40
METADATA_VALUE_MAX_LENGTH = 500
LIST_LIMIT_MAX = 100

Data = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Endpoint = Callable[[Data, dict[str, str], list[str] | None], Any]

logger = logging.getLogger("localstripe_ext")

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_idempotency_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("idempotency_key", default=None)
_stripe_version: contextvars.ContextVar[str | None] = contextvars.ContextVar("stripe_version", default=None)


def _error(status: int, message: str, *, kind: str = "invalid_request_error", **fields: Any) -> Exception:
    """A Stripe-shaped error: ``{"error": {"type", "message", "code"?, "param"?, …}}``."""
    err: Exception = UserError(status, message, {k: v for k, v in fields.items() if v is not None})
    err.body["error"]["type"] = kind  # type: ignore[attr-defined]
    return err


def _reject_unknown(data: Data, allowed: Iterable[str]) -> None:
    known = set(allowed)
    for key in data:
        if key not in known:
            raise _error(400, f"Received unknown parameter: {key}", param=key, code="parameter_unknown")


def _as_bool(data: Data, key: str) -> bool | None:
    value = data.get(key)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _error(400, f"Invalid boolean: {value}", param=key)


def _as_int(data: Data, key: str, *, minimum: int | None = None, maximum: int | None = None) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _error(400, f"Invalid integer: {value}", param=key, code="parameter_invalid_integer")
    try:
        number = int(value)
    except ValueError:
        raise _error(400, f"Invalid integer: {value}", param=key, code="parameter_invalid_integer") from None
    if minimum is not None and number < minimum:
        raise _error(400, f"This value must be greater than or equal to {minimum}.", param=key)
    if maximum is not None and number > maximum:
        raise _error(400, f"This value must be less than or equal to {maximum}.", param=key)
    return number


def _as_decimal(value: Any, key: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise _error(400, f"Invalid decimal: {value}", param=key) from None
    if not number.is_finite():
        raise _error(400, f"Invalid decimal: {value}", param=key)
    return number


def _as_str(data: Data, key: str, *, max_length: int | None = None) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _error(400, f"Invalid string: {value}", param=key)
    if max_length is not None and len(value) > max_length:
        raise _error(400, f"Invalid string: must be at most {max_length} characters long", param=key)
    return value


def _metadata(value: Any, current: dict[str, str] | None = None) -> dict[str, str]:
    """Stripe's metadata update: merge keys, an empty value unsets a key, ``""`` unsets all."""
    result = dict(current or {})
    if value is None:
        return result
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise _error(400, "Invalid object", param="metadata")
    for key, item in value.items():
        if item == "" or item is None:
            result.pop(key, None)
            continue
        if len(key) > METADATA_KEY_MAX_LENGTH:
            raise _error(400, f"Metadata keys can have up to {METADATA_KEY_MAX_LENGTH} characters.", param="metadata")
        if len(str(item)) > METADATA_VALUE_MAX_LENGTH:
            raise _error(
                400, f"Metadata values can have up to {METADATA_VALUE_MAX_LENGTH} characters.", param="metadata"
            )
        result[key] = str(item)
    if len(result) > METADATA_MAX_KEYS:
        raise _error(400, f"Metadata can have up to {METADATA_MAX_KEYS} keys.", param="metadata")
    return result


def _retrieve(cls: Any, object_id: Any, noun: str, *, param: str = "id") -> Any:
    obj = ls.store.get(f"{cls.object}:{object_id}") if isinstance(object_id, str) else None
    if obj is None:
        raise _error(404, f"No such {noun}: '{object_id}'", code="resource_missing", param=param)
    return obj


def _now() -> int:
    return int(clock_now())  # the movable clock (clock.py), not time.time()


def _objects(cls: Any) -> list[Any]:
    """Every stored object of a class, newest first (Stripe's list order)."""
    prefix = cls.object + ":"
    items = [value for key, value in ls.store.items() if key.startswith(prefix)]
    items.reverse()  # insertion order breaks ties between objects created in the same second
    items.sort(key=lambda obj: obj.created, reverse=True)
    return items


def _created_filter(value: Any, param: str) -> Callable[[int], bool]:
    """``created=<int>`` or ``created[gt|gte|lt|lte]=<int>``."""
    if value is None:
        return lambda _stamp: True
    if isinstance(value, dict):
        bounds: dict[str, int] = {}
        for op, raw in value.items():
            if op not in OPERATORS:
                raise _error(400, f"Received unknown parameter: {param}[{op}]", code="parameter_unknown")
            bound = _as_int({f"{param}[{op}]": raw}, f"{param}[{op}]")
            assert bound is not None
            bounds[op] = bound
        return lambda stamp: all(OPERATORS[op](stamp, bound) for op, bound in bounds.items())
    exact = _as_int({param: value}, param)
    return lambda stamp: stamp == exact


OPERATORS: dict[str, Callable[[int, int], bool]] = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}


def _page(url: str, items: list[Any], data: Data, expand: list[str] | None, noun: str) -> Data:
    """One page of a Stripe list: ``limit`` (1–100, default 10), ``starting_after``, ``ending_before``."""
    limit = _as_int(data, "limit", minimum=1, maximum=LIST_LIMIT_MAX) or 10
    starting_after = data.get("starting_after")
    ending_before = data.get("ending_before")
    if starting_after and ending_before:
        raise _error(400, "You may only specify one of these parameters: ending_before, starting_after.")
    ids = [obj.id for obj in items]
    if starting_after:
        if starting_after not in ids:
            raise _error(404, f"No such {noun}: '{starting_after}'", code="resource_missing", param="starting_after")
        window = items[ids.index(starting_after) + 1 :]
        page, has_more = window[:limit], len(window) > limit
    elif ending_before:
        if ending_before not in ids:
            raise _error(404, f"No such {noun}: '{ending_before}'", code="resource_missing", param="ending_before")
        window = items[: ids.index(ending_before)]
        page, has_more = window[-limit:], len(window) > limit
    else:
        page, has_more = items[:limit], len(items) > limit
    item_expand = [path[len("data.") :] for path in expand or [] if path.startswith("data.")]
    return {
        "object": "list",
        "url": url,
        "has_more": has_more,
        "data": [obj._export(expand=item_expand) for obj in page],
    }
