"""A scripted fault-injecting reverse proxy in front of localstripe, for tests.

    with run_fault_proxy(localstripe_url) as proxy:
        proxy.script("POST", r"/v1/invoices", Fault.DROP)       # the next invoice create only
        gateway = Gateway(client(api_base=proxy.url))
        ...
        proxy.log                                               # every request, in arrival order

It listens on 127.0.0.1 (a free port) and forwards to the upstream base URL. Per request,
the first rule whose method and path match (and that has uses left) decides what happens;
without one the request passes. Every response carries ``Connection: close``, so each
request — a retry included — arrives on its own connection and a reset hits only it.

Faults:
- ``PASS``: forward and relay.
- ``DELAY``: hold the request until a later request with the same Idempotency-Key has
  been answered (the client's retry, so the client has timed out by then), at most
  ``delay_seconds``; then forward it and try to relay a reply nobody waits for any more:
  a slow network whose late original lands after the client's retry.
- ``ERROR_500``: answer 500 ``api_error`` without forwarding.
- ``RATE_LIMITED``: answer 429 ``rate_limit`` without forwarding (stripe-python does not
  retry it; our gateway does); ``RATE_LIMITED_RETRY``: the same with
  ``Stripe-Should-Retry: true`` (both would; the gateway alone does).
- ``RESET``: close the connection with a TCP reset, without forwarding or answering.
- ``DROP``: forward (Stripe acts on it), then reset the connection instead of relaying:
  the request reached Stripe, the client never hears back.

``forget_keys()`` stands in for Stripe's 24-hour key expiry.

Bounded: the context manager stops the server, cuts held requests short (they are then not
forwarded), and joins every handler thread; a proxy left running stops itself after
``lifetime_seconds``."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOST = "127.0.0.1"
# Hop-by-hop headers, and those this server writes itself.
NOT_RELAYED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        "date",
        "server",
    }
)
UPSTREAM_TIMEOUT = 10.0  # seconds; localstripe answers in milliseconds
JOIN_TIMEOUT = 5.0


class Fault(StrEnum):
    PASS = "pass"
    DELAY = "delay"
    ERROR_500 = "500"
    RATE_LIMITED = "429"
    RATE_LIMITED_RETRY = "429+should-retry"
    RESET = "reset"
    DROP = "drop"


@dataclass
class Rule:
    method: str
    path: re.Pattern[str]
    fault: Fault
    times: int


@dataclass
class Record:
    """One request as the proxy saw it. `status` is what the client received (None: no
    answer); `upstream_status` what Stripe answered (None: never forwarded)."""

    seq: int
    method: str
    path: str
    query: str
    idempotency_key: str | None
    fault: Fault
    status: int | None = None
    upstream_status: int | None = None
    replayed: bool = False  # Stripe answered from its idempotency store (Idempotent-Replayed)
    done: bool = False

    @property
    def reached_stripe(self) -> bool:
        return self.upstream_status is not None


@dataclass
class _State:
    upstream: str
    delay_seconds: float
    rules: list[Rule] = field(default_factory=list)
    log: list[Record] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(init=False)  # on `lock`: a record is done
    stopping: threading.Event = field(default_factory=threading.Event)
    key_epoch: int = 0  # > 0: forwarded Idempotency-Keys get a suffix Stripe has never seen

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    def overtaken(self, record: Record) -> bool:
        """A later request with the same key has been answered (call with `lock` held)."""
        return record.idempotency_key is not None and any(
            later.done and later.idempotency_key == record.idempotency_key for later in self.log[record.seq + 1 :]
        )


def _stripe_error(error_type: str, message: str, code: str | None = None) -> bytes:
    error: dict[str, Any] = {"type": error_type, "message": message}
    if code:
        error["code"] = code
    return json.dumps({"error": error}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # --- the decision ------------------------------------------------------------------
    def _handle(self) -> None:
        self.close_connection = True
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        with state.lock:
            fault = Fault.PASS
            for rule in state.rules:
                if rule.times > 0 and rule.method == self.command and rule.path.fullmatch(path):
                    rule.times -= 1
                    fault = rule.fault
                    break
            record = Record(
                seq=len(state.log),
                method=self.command,
                path=path,
                query=query,
                idempotency_key=self.headers.get("Idempotency-Key"),
                fault=fault,
            )
            state.log.append(record)
        try:
            self._apply(fault, record, body)
        finally:
            with state.changed:
                record.done = True
                state.changed.notify_all()

    def _apply(self, fault: Fault, record: Record, body: bytes) -> None:
        if fault == Fault.ERROR_500:
            self._answer(record, 500, _stripe_error("api_error", "Injected by the fault proxy."))
        elif fault in (Fault.RATE_LIMITED, Fault.RATE_LIMITED_RETRY):
            extra = {"Stripe-Should-Retry": "true"} if fault == Fault.RATE_LIMITED_RETRY else {}
            payload = _stripe_error("invalid_request_error", "Too many requests (fault proxy).", "rate_limit")
            self._answer(record, 429, payload, extra)
        elif fault == Fault.RESET:
            self._reset()
        elif fault == Fault.DROP:
            self._forward(record, body)
            self._reset()
        elif fault == Fault.DELAY:
            if not self._hold(record):
                self._reset()  # the test is over: do not deliver it any more
                return
            status, headers, payload = self._forward(record, body)
            with contextlib.suppress(OSError):  # the client gave up long ago
                self._answer(record, status, payload, headers)
        else:
            status, headers, payload = self._forward(record, body)
            self._answer(record, status, payload, headers)

    # --- the mechanics -----------------------------------------------------------------
    def _hold(self, record: Record) -> bool:
        """Wait until overtaken by a retry or `delay_seconds` pass; False if stopping."""
        state = self.server.state
        deadline = time.monotonic() + state.delay_seconds
        with state.changed:
            while not state.overtaken(record) and not state.stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                state.changed.wait(min(left, 0.05))
        return not state.stopping.is_set()

    def _forward(self, record: Record, body: bytes) -> tuple[int, dict[str, str], bytes]:
        upstream = urlsplit(self.server.state.upstream)
        connection = http.client.HTTPConnection(upstream.hostname or HOST, upstream.port, timeout=UPSTREAM_TIMEOUT)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in NOT_RELAYED}
        headers["Host"] = upstream.netloc
        key = next((k for k in headers if k.lower() == "idempotency-key"), None)
        if key and self.server.state.key_epoch:
            headers[key] = f"{headers[key]}~forgotten{self.server.state.key_epoch}"
        headers["Connection"] = "close"
        try:
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            relayed = {k: v for k, v in response.getheaders() if k.lower() not in NOT_RELAYED}
            record.upstream_status = response.status
            record.replayed = response.getheader("Idempotent-Replayed") == "true"
            return response.status, relayed, payload
        finally:
            connection.close()

    def _answer(self, record: Record, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if not any(name.lower() == "content-type" for name in headers or {}):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()
        record.status = status

    def _reset(self) -> None:
        """Close with RST (SO_LINGER 0): the client sees a reset, not a clean end of stream."""
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins the handler threads

    def __init__(self, state: _State) -> None:
        self.state = state
        super().__init__((HOST, 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # resets and clients that gave up are what this server is for


class FaultProxy:
    def __init__(self, upstream: str, *, delay_seconds: float = 2.0) -> None:
        self._state = _State(upstream=upstream.rstrip("/"), delay_seconds=delay_seconds)
        self._server = _ProxyServer(self._state)
        self.url = f"http://{HOST}:{self._server.server_address[1]}"
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-proxy", daemon=True
        )

    # --- scripting ---------------------------------------------------------------------
    def script(self, method: str, path: str, fault: Fault, *, times: int = 1) -> None:
        """The next `times` requests matching `method` and the regex `path` (whole path,
        no query) get `fault`; rules are tried in the order they were added."""
        with self._state.lock:
            self._state.rules.append(Rule(method.upper(), re.compile(path), fault, times))

    def forget_keys(self) -> None:
        """Stripe forgets idempotency keys after 24 h; localstripe cannot be told to. From
        now on every forwarded key gets a new suffix (the log keeps the key as sent), so
        Stripe treats a write it has already done as a new one."""
        with self._state.lock:
            self._state.key_epoch += 1

    def clear(self) -> None:
        with self._state.lock:
            self._state.rules.clear()

    # --- what happened -----------------------------------------------------------------
    @property
    def log(self) -> list[Record]:
        with self._state.lock:
            return list(self._state.log)

    def mark(self) -> int:
        """A position in the log, for `since`."""
        with self._state.lock:
            return len(self._state.log)

    def since(self, mark: int) -> list[Record]:
        with self._state.lock:
            return self._state.log[mark:]

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until every request seen so far is handled (held ones included)."""
        deadline = time.monotonic() + timeout
        while not all(record.done for record in self.log):
            if time.monotonic() > deadline:
                raise TimeoutError("the fault proxy still handles requests")
            time.sleep(0.02)

    # --- lifetime ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Idempotent; also what the watchdog calls when a test forgot to."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
            self._state.stopping.set()  # held requests give up at once
            if self._thread.is_alive():
                self._server.shutdown()
            self._server.server_close()  # joins the handler threads
            self._thread.join(timeout=JOIN_TIMEOUT)


@contextlib.contextmanager
def run_fault_proxy(
    upstream: str, *, delay_seconds: float = 2.0, lifetime_seconds: float = 300.0
) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream, delay_seconds=delay_seconds)
    proxy.start()
    watchdog = threading.Timer(lifetime_seconds, proxy.stop)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield proxy
    finally:
        watchdog.cancel()
        proxy.stop()
