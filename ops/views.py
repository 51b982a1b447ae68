"""Health and metrics endpoints (issue 12, item 6).

- `GET /health/live`: the process answers (no database, cache or broker touched): 200.
- `GET /health/ready`: every dependency and dead-man switch (ops/health.py): 200 when all
  are green, 503 naming what failed. Both are public: they say whether things work and
  how old the last tick is, never data, hosts, versions or secrets.
- `GET /metrics`: Prometheus' text format, only with `Authorization: Bearer $METRICS_TOKEN`
  (401 without it); when METRICS_TOKEN is empty the endpoint does not exist (404).

The two health views are normally answered by ops.middleware.HealthCheckMiddleware before
any other middleware (see there); the URL patterns reach the same views."""

from __future__ import annotations

import hmac
import logging

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from audit.middleware import client_ip
from ops.health import readiness
from ops.metrics import metrics_text

logger = logging.getLogger("ops.views")


def _plain(response: HttpResponse) -> HttpResponse:
    response["X-Content-Type-Options"] = "nosniff"
    return response


@require_safe
@never_cache
def health_live(request: HttpRequest) -> HttpResponse:
    """Liveness: this process is up and serving (touches no dependency)."""
    return _plain(JsonResponse({"status": "ok"}))


@require_safe
@never_cache
def health_ready(request: HttpRequest) -> HttpResponse:
    """Readiness: database, cache, broker, billing-run tick and audit sealer (ops/health.py); 503 names what failed."""
    ready, body = readiness()
    return _plain(JsonResponse(body, status=200 if ready else 503))


def _bearer(request: HttpRequest) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


@require_safe
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics (ops/metrics.py), for the bearer of METRICS_TOKEN only; 404 when it is not set."""
    expected = settings.METRICS_TOKEN
    if not expected:
        raise Http404
    given = _bearer(request)
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        logger.warning("metrics: refused a scrape without the right bearer token from %s", client_ip(request) or "?")
        refused = JsonResponse({"message": "A bearer token is required (Authorization: Bearer …)."}, status=401)
        refused["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return _plain(refused)
    return _plain(HttpResponse(metrics_text(), content_type=CONTENT_TYPE_PLAIN_0_0_4))
