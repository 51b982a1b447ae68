"""gunicorn settings for the web process: `gunicorn -c deploy/gunicorn.conf.py config.wsgi`.

Everything that differs between hosts comes from the environment (docs/deploy.md):

| variable | default | meaning |
|---|---|---|
| `GUNICORN_BIND` | `127.0.0.1:8000` | where the TLS proxy reaches us; never a public interface |
| `GUNICORN_WORKERS` (or `WEB_CONCURRENCY`) | 2 × CPUs + 1 | sync worker processes |
| `GUNICORN_TIMEOUT` | 30 | seconds a request may take before its worker is killed and replaced |
| `GUNICORN_GRACEFUL_TIMEOUT` | 30 | seconds in-flight requests get after SIGTERM/HUP before workers are killed |
| `GUNICORN_MAX_REQUESTS` | 0 (off) | recycle a worker after this many requests (with 10 % jitter) |
| `GUNICORN_FORWARDED_ALLOW_IPS` | `127.0.0.1,::1` | peers whose X-Forwarded-Proto gunicorn believes (the proxy) |

The access log (stdout) carries no query string, no Referer and no request body: a query
may hold a search term, and the Referer a previous page's query. It shows the peer (the
proxy), time, method, path, status, bytes, duration and our X-Request-ID, which ties a line
to the audit trail. The client's own address is in the audit trail (TRUSTED_PROXY_COUNT),
not here."""

from __future__ import annotations

import multiprocessing
import os


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


bind = [item.strip() for item in os.environ.get("GUNICORN_BIND", "127.0.0.1:8000").split(",") if item.strip()]
workers = _int("GUNICORN_WORKERS", _int("WEB_CONCURRENCY", 2 * multiprocessing.cpu_count() + 1))
worker_class = "sync"  # one request per process at a time; no keep-alive to the proxy
timeout = _int("GUNICORN_TIMEOUT", 30)
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 30)
max_requests = _int("GUNICORN_MAX_REQUESTS", 0)
max_requests_jitter = max_requests // 10
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Logs to stdout/stderr: systemd's journal (or the platform) collects them.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
# %(U)s is the path without its query string (%(r)s, the request line, would include it).
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms rid=%({x-request-id}o)s'

# Not preloaded: each worker imports the application itself (nothing opened before the
# fork is shared). A settings module that refuses to start (production.py's checks) makes
# every worker fail to boot, and gunicorn's master then exits non-zero.
preload_app = False
# Heartbeat files in memory, not on a disk that may stall (recommended for containers/VMs).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 - gunicorn's heartbeat, not data
