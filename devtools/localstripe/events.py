"""Events: ``request``, ``pending_webhooks`` and our API version on each, emission and
delivery through localstripe's webhooks, ``GET /v1/events`` with Stripe's filters.
"""

from __future__ import annotations

from typing import Any

from localstripe import resources as ls
from localstripe import webhooks

from devtools.localstripe.common import (
    Data,
    _as_str,
    _created_filter,
    _error,
    _idempotency_key,
    _objects,
    _page,
    _reject_unknown,
    _request_id,
    _stripe_version,
)

# Stamped on events when the request that caused them sent no Stripe-Version header
# (stripe-python 15.6.2 sends this one by default).
DEFAULT_API_VERSION = "2026-08-26.dahlia"


_original_event_init = ls.Event.__init__


def _event_init(self: Any, type_: str, data: Any) -> None:
    """localstripe's Event, plus ``request``, ``pending_webhooks`` and our API version."""
    _original_event_init(self, type_, data)
    self.api_version = _stripe_version.get() or DEFAULT_API_VERSION
    self.request = {"id": _request_id.get(), "idempotency_key": _idempotency_key.get()}
    self.pending_webhooks = sum(
        1 for hook in webhooks._webhooks.values() if hook.events is None or type_ in hook.events
    )


def _emit(type_: str, obj: Any, previous: Data | None = None) -> Any:
    """Record an event (snapshot of ``obj`` now) and deliver it to the registered webhooks."""
    event = ls.Event(type_, obj)
    if previous:
        event.data["previous_attributes"] = previous
    ls.schedule_webhook(event)
    return event


def _events_list(data: Data, _match: dict[str, str], expand: list[str] | None) -> Data:
    _reject_unknown(data, ("type", "types", "created", "limit", "starting_after", "ending_before", "delivery_success"))
    wanted_type = _as_str(data, "type")
    types = data.get("types")
    if types is not None and not isinstance(types, list):
        raise _error(400, "Invalid array", param="types")
    if wanted_type and types:
        raise _error(400, "You may only specify one of these parameters: type, types.")
    created = _created_filter(data.get("created"), "created")

    def matches(event: Any) -> bool:
        if wanted_type and not _type_matches(event.type, wanted_type):
            return False
        if types and not any(_type_matches(event.type, t) for t in types):
            return False
        return created(event.created)

    return _page("/v1/events", [e for e in _objects(ls.Event) if matches(e)], data, expand, "event")


def _type_matches(event_type: str, pattern: str) -> bool:
    """Stripe's ``type`` filter accepts ``*`` as a wildcard (``invoice.*``)."""
    if pattern.endswith("*"):
        return event_type.startswith(pattern[:-1])
    return event_type == pattern
