"""Health probes answered first, before every other middleware.

`/health/live` and `/health/ready` are answered here, ahead of the security, session,
authentication and audit middlewares, because a load balancer's probe:
- must not depend on what it checks (a session or audit middleware that needs the
  database would make liveness a database check);
- often comes over plain HTTP inside the private network, which production's
  SECURE_SSL_REDIRECT would answer with a redirect (the probes carry no cookie, no
  token, no data: nothing to protect in transit);
- is sent by some load balancers with the target's IP address as Host, which
  ALLOWED_HOSTS rightly refuses: list such hosts in HEALTH_CHECK_HOSTS, which admits
  them for these two paths only (every other path still answers 400 to them);
- should not swamp the request metrics.

The Host is still checked (ALLOWED_HOSTS or HEALTH_CHECK_HOSTS); any other host falls
through to Django's own check (400). /metrics is not handled here: it stays behind every
middleware, including the HTTPS redirect."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.http.request import split_domain_port, validate_host

from ops.views import health_live, health_ready

PROBES: dict[str, Callable[[HttpRequest], HttpResponse]] = {
    "/health/live": health_live,
    "/health/ready": health_ready,
}


def _host_allowed(request: HttpRequest) -> bool:
    try:
        request.get_host()  # Django's own check against ALLOWED_HOSTS
        return True
    except DisallowedHost:
        pass
    domain, _port = split_domain_port(request.META.get("HTTP_HOST") or request.META.get("SERVER_NAME", ""))
    return bool(domain) and validate_host(domain, list(settings.HEALTH_CHECK_HOSTS))


class HealthCheckMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = PROBES.get(request.path_info)
        if probe is None or not _host_allowed(request):
            return self.get_response(request)
        return probe(request)
