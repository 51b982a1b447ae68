"""The one module that talks to Stripe (spec §8, §9).

- One pinned API version, keys and base URL only from the environment (settings).
- A TLS floor of 1.2 on the HTTP client; certificate verification always on. Plain HTTP
  has no TLS to put a floor on: a client speaks it only to an http:// base (localstripe)
  under the development or test settings (or DEBUG), and never after a redirect.
- Explicit timeouts and retries; every POST carries an idempotency key derived from a
  local row and a step, so a retry — by stripe-python, Celery or an operator — can never
  create a second object.
- The PHI guard checks every outbound payload before it leaves; a refusal never reaches
  the network.
- SDK errors are mapped to a small family: CardDeclined, Transient, Permanent; an answer
  with `Stripe-Should-Retry: false` is Permanent (retrying cannot change it).
- Every HTTP request, stripe-python's own retries included, first takes a slot from the
  shared rate limit (billing/stripe/pacing.py; reads and writes apart). A 429 is backed off
  here (Retry-After if given, else exponential with jitter), every worker slowing down with
  it; past STRIPE_RATE_LIMITED_RETRIES it is a Transient error (the push task retries).

Nothing here runs inside a database transaction: callers commit first (billing.seam)."""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import requests
import stripe
from django.conf import ENVIRONMENT_VARIABLE, settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from requests.adapters import BaseAdapter, HTTPAdapter

from audit.models import Outcome
from audit.services import audit_record
from billing.phi_guard import STRIPE_STRUCTURAL_PARAMS, PhiIndex, PhiRefused, phi_check
from billing.stripe import pacing
from offices.models import Office

if TYPE_CHECKING:
    from stripe.params import (
        CustomerCreateParams,
        CustomerSearchParams,
        CustomerUpdateParams,
        InvoiceCreateParams,
        InvoiceFinalizeInvoiceParams,
        InvoiceItemCreateParams,
        InvoiceListParams,
        InvoicePayParams,
    )
    from stripe.params.checkout import SessionCreateParams

logger = logging.getLogger("billing.stripe")

# Pinned in one place. Stripe webhooks and responses follow the version we send.
STRIPE_API_VERSION = "2026-08-26.dahlia"


class GatewayError(Exception):
    """A Stripe call failed. `transient` ones are worth retrying with the same key."""

    transient = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class CardDeclined(GatewayError):
    pass


class Transient(GatewayError):
    transient = True


class Permanent(GatewayError):
    pass


class RateLimitWait(Transient):
    """No request slot within STRIPE_RATE_LIMIT_MAX_WAIT_SECONDS (our pacing): nothing was
    sent; retried later like any transient error."""


class OutsideTransactionRequired(RuntimeError):
    pass


class Tls12Adapter(HTTPAdapter):
    """An HTTPS adapter whose SSL context refuses anything older than TLS 1.2."""

    def __init__(self, *args: Any, ca_file: str | None = None, **kwargs: Any) -> None:
        self._ca_file = ca_file
        super().__init__(*args, **kwargs)

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self._ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context()
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["ssl_context"] = self._context()
        return super().proxy_manager_for(*args, **kwargs)


class PlainHttpRefused(requests.exceptions.InvalidSchema):
    """A request over plain HTTP from a session that speaks TLS only (not retried)."""


class _RefusePlainHttp(BaseAdapter):
    """Mounted on http:// unless plain HTTP is allowed: nothing leaves in clear, whether
    the URL came from the base or from a redirect."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        raise PlainHttpRefused(f"refused to send a request to Stripe over plain HTTP: {request.url}")

    def close(self) -> None:
        pass


# Where localstripe over plain http:// is expected (with DEBUG too). Production refuses a
# non-https STRIPE_API_BASE at start-up already (config/settings/production.py).
_PLAIN_HTTP_SETTINGS = frozenset({"config.settings.local", "config.settings.test"})
_TEST_SETTINGS = "config.settings.test"


def _settings_module() -> str:
    """The settings module Django was started with. Not `settings.SETTINGS_MODULE`: under
    override_settings (every test that changes a setting) that reads None."""
    return os.environ.get(ENVIRONMENT_VARIABLE, "")


def _plain_http(base: str | None) -> bool:
    """Whether `base` is plain HTTP, refusing it where it is not expected."""
    if not base or not base.strip().lower().startswith("http://"):
        return False
    if settings.DEBUG or _settings_module() in _PLAIN_HTTP_SETTINGS:
        return True
    raise ImproperlyConfigured(
        f"STRIPE_API_BASE {base!r} is plain HTTP (no TLS, so no TLS floor): only localstripe in "
        "development or tests may be reached that way. Use https://, or leave it empty for Stripe's own."
    )


# Backing off from Stripe's 429 (stripe-python 15 retries a 429 only when Stripe says
# `Stripe-Should-Retry: true`, with its own short delays, and ignores Retry-After).
RATE_LIMITED_BACKOFF_BASE = 0.5  # seconds before the first retry, doubled at each one
RATE_LIMITED_BACKOFF_MAX = 8.0
RETRY_AFTER_MAX = 60.0  # a longer Retry-After is not waited for here, only held on the bucket


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """A response header by name, whatever its case (requests' headers are case-insensitive,
    a plain dict is not)."""
    if not headers:
        return None
    found = headers.get(name)
    if found is not None:
        return str(found)
    lowered = name.lower()
    return next((str(v) for k, v in headers.items() if k.lower() == lowered), None)


def rate_limited_delay(headers: Mapping[str, str] | None, attempt: int) -> float:
    """Seconds before retrying a 429: Retry-After (seconds or an HTTP date) when given,
    else 0.5 s doubled per attempt up to 8 s, with jitter (half to all of it)."""
    retry_after = (_header(headers, "retry-after") or "").strip()
    if retry_after:
        try:
            seconds = float(retry_after)
        except ValueError:
            try:
                seconds = email.utils.parsedate_to_datetime(retry_after).timestamp() - time.time()
            except (TypeError, ValueError):
                seconds = -1.0
        if seconds >= 0:
            return min(seconds, RETRY_AFTER_MAX)
    delay = min(RATE_LIMITED_BACKOFF_BASE * 2 ** (attempt - 1), RATE_LIMITED_BACKOFF_MAX)
    return delay * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not a secret)


def _error_code(body: Any) -> str | None:
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, TypeError, KeyError):
        return None


class PacedRequestsClient(stripe.RequestsClient):
    """stripe-python's requests client with our pacing and 429 handling around every
    attempt (stripe-python calls `request` once per attempt, its own retries included)."""

    def request(  # type: ignore[override]  # RequestsClient's own signature (no _usage)
        self, method: str, url: str, headers: Mapping[str, str] | None, post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        kind = pacing.kind_of(method)
        retried = 0
        while True:
            try:
                pacing.acquire(kind)
            except pacing.SlotUnavailable as exc:
                raise RateLimitWait(str(exc), code="pacing_wait") from exc
            response = super().request(method, url, headers, post_data)
            content, status, rheaders = response
            if status != 429:
                return response
            if (_header(rheaders, "stripe-should-retry") or "").lower() == "false":
                pacing.RATE_LIMITED.labels(kind=kind, outcome="not_retried").inc()
                return response  # mapped to Permanent by _map_errors
            delay = rate_limited_delay(rheaders, retried + 1)
            if _error_code(content) != "lock_timeout":  # an object's lock, not the account's pace
                pacing.hold(kind, delay)
            if retried >= settings.STRIPE_RATE_LIMITED_RETRIES or delay > settings.STRIPE_RATE_LIMIT_MAX_WAIT_SECONDS:
                pacing.RATE_LIMITED.labels(kind=kind, outcome="given_up").inc()
                logger.warning(
                    "Stripe answered 429 to %s %s %d times: left to the task's retry", method, url, retried + 1
                )
                return response  # RateLimitError, mapped to Transient
            retried += 1
            pacing.RATE_LIMITED.labels(kind=kind, outcome="retried").inc()
            logger.info("Stripe answered 429 to %s %s: retry %d in %.2f s", method, url, retried, delay)
            time.sleep(delay)

    def _should_retry(
        self,
        response: tuple[Any, int, Mapping[str, str] | None] | None,
        api_connection_error: stripe.APIConnectionError | None,
        num_retries: int,
        max_network_retries: int | None,
    ) -> bool:
        if response is not None and response[1] == 429:
            return False  # `request` has backed off already; retrying here would multiply attempts
        return bool(super()._should_retry(response, api_connection_error, num_retries, max_network_retries))


def http_session(*, ca_file: str | None = None, allow_plain_http: bool = False) -> requests.Session:
    """TLS 1.2+ on https://; plain http:// refused unless allowed (an http:// localstripe)."""
    session = requests.Session()
    session.mount("https://", Tls12Adapter(ca_file=ca_file))
    if not allow_plain_http:
        session.mount("http://", _RefusePlainHttp())
    return session


# Clients built by `client()`, per thread (a requests session is not shared between
# threads), keyed by everything they were built from: building one loads the CA bundle
# into a new TLS context (~30 ms of CPU) and opens new connections, so a webhook request
# or a push must not pay that every time. Settings change under tests: a new key, a new
# client. Bounded, oldest dropped first (tests point at many short-lived servers).
_clients = threading.local()
_CLIENTS_PER_THREAD = 8


def _cached_clients() -> OrderedDict[tuple[Any, ...], tuple[stripe.StripeClient, requests.Session]]:
    cache: OrderedDict[tuple[Any, ...], tuple[stripe.StripeClient, requests.Session]] | None = getattr(
        _clients, "cache", None
    )
    if cache is None:
        cache = _clients.cache = OrderedDict()
    return cache


def _mtime(path: str | None) -> int | None:
    """A CA file rewritten in place is a new client."""
    try:
        return os.stat(path).st_mtime_ns if path else None
    except OSError:
        return None


def client(*, api_base: str | None = None, ca_file: str | None = None) -> stripe.StripeClient:
    """A configured client, reused by this thread while the settings it was built from stay
    the same. `api_base` and `ca_file` exist for tests (localstripe, a test CA)."""
    base = api_base or settings.STRIPE_API_BASE or None
    allow_plain_http = _plain_http(base)  # refused here, before any cached client is handed out
    timeout = (settings.STRIPE_CONNECT_TIMEOUT_SECONDS, settings.STRIPE_READ_TIMEOUT_SECONDS)
    key = (
        base,
        settings.STRIPE_SECRET_KEY,
        ca_file,
        _mtime(ca_file),
        timeout,
        settings.STRIPE_MAX_NETWORK_RETRIES,
        allow_plain_http,
        STRIPE_API_VERSION,
    )
    cache = _cached_clients()
    found = cache.get(key)
    if found is not None:
        cache.move_to_end(key)
        return found[0]
    session = http_session(ca_file=ca_file, allow_plain_http=allow_plain_http)
    built = stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        stripe_version=STRIPE_API_VERSION,
        base_addresses={"api": base} if base else None,
        max_network_retries=settings.STRIPE_MAX_NETWORK_RETRIES,
        http_client=PacedRequestsClient(timeout=timeout, session=session),
    )
    cache[key] = (built, session)
    while len(cache) > _CLIENTS_PER_THREAD:
        _, (_, dropped) = cache.popitem(last=False)
        dropped.close()
    return built


def configure_module_client() -> None:
    """stripe-python's module-level client is what dj-stripe uses: give it our pinned API
    version, the TLS floor and our retries too."""
    allow_plain_http = _plain_http(settings.STRIPE_API_BASE)  # refused before anything is set
    stripe.api_version = STRIPE_API_VERSION
    stripe.max_network_retries = settings.STRIPE_MAX_NETWORK_RETRIES
    stripe.default_http_client = PacedRequestsClient(
        timeout=(settings.STRIPE_CONNECT_TIMEOUT_SECONDS, settings.STRIPE_READ_TIMEOUT_SECONDS),
        session=http_session(allow_plain_http=allow_plain_http),
    )
    if settings.STRIPE_API_BASE:
        stripe.api_base = settings.STRIPE_API_BASE


def stripe_field(obj: Any, name: str) -> Any:
    """A field of a Stripe object, or None when it is absent (StripeObject is not a dict
    in stripe-python 15: no `.get`)."""
    try:
        return obj[name]
    except (KeyError, TypeError):
        return None


def _map_errors(exc: stripe.StripeError) -> GatewayError:
    code = getattr(exc, "code", None)
    message = getattr(exc, "user_message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, stripe.CardError):
        return CardDeclined(message, code=code)
    if (_header(getattr(exc, "headers", None), "stripe-should-retry") or "").lower() == "false":
        # Stripe says a retry cannot succeed (a 429 or 5xx that the same key would replay):
        # a failure for an operator, not something to retry hourly.
        return Permanent(message, code=code or "stripe_should_not_retry")
    if isinstance(exc, stripe.APIConnectionError) and not getattr(exc, "should_retry", True):
        # TLS refused, certificate not verified, interception: retrying cannot help, and an
        # invoice must not sit "pending" forever behind it. Fail loudly instead.
        return Permanent(message, code=code)
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError):
        return Transient(message, code=code)
    if isinstance(exc, stripe.APIError) or (getattr(exc, "http_status", None) or 0) >= 500:
        return Transient(message, code=code)
    if isinstance(exc, stripe.IdempotencyError) and getattr(exc, "http_status", None) == 409:
        return Transient(message, code=code)  # the same key is in flight: retry later
    return Permanent(message, code=code)


def _outside_transaction() -> None:
    """Refuses a call inside a database transaction. The test suite's escape hatch
    (`STRIPE_ALLOW_IN_TRANSACTION`, set by tests that run in the test's own transaction) is
    read under the test settings only; production refuses to start with it."""
    if not connection.in_atomic_block:
        return
    if _settings_module() == _TEST_SETTINGS and getattr(settings, "STRIPE_ALLOW_IN_TRANSACTION", False):
        return
    raise OutsideTransactionRequired("Stripe is never called inside a database transaction (spec §8).")


class Gateway:
    """Typed calls for what we use. Each POST names its idempotency key."""

    page_size = 100  # rows per page of every list we read (Stripe's maximum)

    def __init__(self, stripe_client: stripe.StripeClient | None = None) -> None:
        self._client = stripe_client or client()

    def _guard(self, office: Office, payload: dict[str, Any], *, phi: PhiIndex | None = None) -> None:
        """Nothing leaves with PHI in it: a refusal is audited (we run outside transactions,
        so the entry stands on its own) and raised before any request is made."""
        try:
            phi_check(office=office, fields=payload, index=phi, ours_fields=STRIPE_STRUCTURAL_PARAMS)
        except PhiRefused as exc:
            audit_record(
                action="phi_guard.refused",
                target=office,
                office_id=office.pk,
                outcome=Outcome.DENIED,
                reason=f"{exc.kind} in {exc.field_name}",
                data={"context": "stripe_payload", "field": exc.field_name, "kind": exc.kind},
            )
            raise

    def _call(self, fn: Any, params: Any, key: str | None) -> Any:
        _outside_transaction()
        options: dict[str, Any] = {"idempotency_key": key} if key else {}
        try:
            return fn(params=params, options=options)
        except stripe.StripeError as exc:
            raise _map_errors(exc) from exc

    def _each(self, fn: Any, params: Any) -> Iterator[Any]:
        """Every row of a Stripe list, page by page; errors mapped on every page."""
        page = self._call(fn, params, None)
        try:
            yield from page.auto_paging_iter()
        except stripe.StripeError as exc:
            raise _map_errors(exc) from exc

    # --- customers -----------------------------------------------------------------
    def customer_create(self, *, office: Office, key: str) -> Any:
        params: CustomerCreateParams = {
            "name": office.name,
            "email": office.billing_email,
            "metadata": {"office_id": str(office.pk)},
        }
        self._guard(office, dict(params))
        return self._call(self._client.v1.customers.create, params, key)

    def customer_retrieve(self, *, customer_id: str) -> Any:
        return self._call(
            lambda params, options: self._client.v1.customers.retrieve(customer_id, params=params, options=options),
            {},
            None,
        )

    def customers_of_office(self, *, office: Office) -> list[Any]:
        """The customers whose `metadata.office_id` is this office (Stripe's search: eventually
        consistent, which is what the look-up needs — it finds a customer created by an
        attempt whose answer was lost, hours or days ago, past the idempotency window)."""
        params: CustomerSearchParams = {"query": f"metadata['office_id']:'{int(office.pk)}'", "limit": 10}
        result = self._call(self._client.v1.customers.search, params, None)
        return list(result["data"])

    def customers_list(self) -> Iterator[Any]:
        """Every customer of the account, page by page (reconciliation's identity check)."""
        yield from self._each(self._client.v1.customers.list, {"limit": self.page_size})

    def customer_update(self, *, office: Office, customer_id: str, key: str) -> Any:
        """Sync the office's business name and billing email (nothing else is sent)."""
        params: CustomerUpdateParams = {"name": office.name, "email": office.billing_email}
        self._guard(office, dict(params))
        return self._call(
            lambda params, options: self._client.v1.customers.update(customer_id, params=params, options=options),
            params,
            key,
        )

    def setup_session_create(
        self, *, office: Office, customer_id: str, currency: str, success_url: str, cancel_url: str, key: str
    ) -> Any:
        """A Stripe-hosted page (Checkout, setup mode) where the office saves a payment
        method: card data never reaches this system."""
        params: SessionCreateParams = {
            "mode": "setup",
            "customer": customer_id,
            "currency": currency,
            "success_url": success_url,
            "cancel_url": cancel_url,
            "payment_method_types": ["card"],
            "metadata": {"office_id": str(office.pk)},
        }
        self._guard(office, dict(params))
        return self._call(self._client.v1.checkout.sessions.create, params, key)

    # --- invoices ------------------------------------------------------------------
    def invoice_create(
        self, *, office: Office, params: InvoiceCreateParams, key: str, phi: PhiIndex | None = None
    ) -> Any:
        self._guard(office, dict(params), phi=phi)
        return self._call(self._client.v1.invoices.create, params, key)

    def invoice_item_create(
        self, *, office: Office, params: InvoiceItemCreateParams, key: str, phi: PhiIndex | None = None
    ) -> Any:
        self._guard(office, dict(params), phi=phi)
        return self._call(self._client.v1.invoice_items.create, params, key)

    def invoice_finalize(self, *, stripe_invoice_id: str, key: str) -> Any:
        params: InvoiceFinalizeInvoiceParams = {"auto_advance": True}
        return self._call(
            lambda params, options: self._client.v1.invoices.finalize_invoice(
                stripe_invoice_id, params=params, options=options
            ),
            params,
            key,
        )

    def invoice_pay(self, *, stripe_invoice_id: str, key: str, out_of_band: bool = False) -> Any:
        params: InvoicePayParams = {"paid_out_of_band": True} if out_of_band else {}
        return self._call(
            lambda params, options: self._client.v1.invoices.pay(stripe_invoice_id, params=params, options=options),
            params,
            key,
        )

    def invoice_void(self, *, stripe_invoice_id: str, key: str) -> Any:
        return self._call(
            lambda params, options: self._client.v1.invoices.void_invoice(
                stripe_invoice_id, params=params, options=options
            ),
            {},
            key,
        )

    def invoice_mark_uncollectible(self, *, stripe_invoice_id: str, key: str) -> Any:
        """An operator's write-off (spec §12): Stripe stops collecting the invoice."""
        return self._call(
            lambda params, options: self._client.v1.invoices.mark_uncollectible(
                stripe_invoice_id, params=params, options=options
            ),
            {},
            key,
        )

    def invoice_delete_draft(self, *, stripe_invoice_id: str) -> Any:
        """A draft cannot be voided in Stripe; it is deleted (it was never sent or charged)."""
        return self._call(
            lambda params, options: self._client.v1.invoices.delete(stripe_invoice_id, params=params, options=options),
            {},
            None,
        )

    def invoice_retrieve(self, *, stripe_invoice_id: str) -> Any:
        return self._call(
            lambda params, options: self._client.v1.invoices.retrieve(
                stripe_invoice_id, params=params, options=options
            ),
            {},
            None,
        )

    def invoice_lines_list(self, *, stripe_invoice_id: str) -> Iterator[Any]:
        """Every line of an invoice, page by page: a retrieved invoice embeds only the
        first page of its lines."""
        yield from self._each(
            lambda params, options: self._client.v1.invoices.line_items.list(
                stripe_invoice_id, params=params, options=options
            ),
            {"limit": self.page_size},
        )

    def invoices_list(self, *, params: InvoiceListParams) -> Iterator[Any]:
        """Every invoice matching `params`, page by page (auto-pagination)."""
        yield from self._each(self._client.v1.invoices.list, params)
