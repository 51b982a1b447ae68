"""A movable clock: ``POST /_config/clock`` sets the fake's "now", so a history built with
the caller's clock moved (seed_demo's backdated months) gets Stripe objects, status
transitions and events stamped at the same instants.

Real Stripe's tool for this is a test clock (``/v1/test_helpers/test_clocks``): frozen,
advanced by hand, attached to customers at creation. Ours is simpler and process-wide, in
localstripe's ``/_config/`` family (like ``/_config/webhooks``): every object follows it,
it keeps ticking from the instant set, and it lives in memory only (a restart is back on
the real time). Idempotency keys keep the real time (their 24 h are real hours).

- ``POST /_config/clock`` with ``frozen_time=<unix seconds>``: "now" is that instant,
  ticking on from there; without ``frozen_time``: back to the real time.
- ``GET /_config/clock``: ``{"now": <unix>, "offset_seconds": <float>}``.
"""

from __future__ import annotations

import time as _time
from typing import Any

from aiohttp import web
from localstripe import resources as ls
from localstripe import server

_offset = 0.0


def now() -> float:
    """The fake's current time, in unix seconds."""
    return _time.time() + _offset


class _ShiftedTime:
    """Stands in for the ``time`` module inside localstripe's resources: ``time()`` follows
    the clock, everything else is the real module."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)

    @staticmethod
    def time() -> float:
        return now()


def install() -> None:
    ls.time = _ShiftedTime()  # the resources module reads time.time() through this name


def _state() -> dict[str, Any]:
    return {"object": "clock", "now": int(now()), "offset_seconds": round(_offset, 3)}


async def config_clock(request: web.Request) -> web.Response:
    global _offset
    if request.method == "POST":
        data = await server.get_post_data(request) or {}
        raw = data.get("frozen_time")
        if raw in (None, ""):
            _offset = 0.0
        else:
            try:
                _offset = float(int(str(raw))) - _time.time()
            except ValueError:
                return server.json_response(
                    {"error": {"type": "invalid_request_error", "message": f"Invalid integer: {raw}"}}, status=400
                )
    return server.json_response(_state())
