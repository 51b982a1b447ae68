"""The TLS floor of the Stripe client (spec §9: TLS 1.2 or newer, enforced by the client;
a server that offers only older versions is refused; certificate verification on).

Loopback HTTPS servers with a `trustme` test CA stand in for Stripe. A deliberately
permissive client reaches the TLS 1.1 server first — otherwise "refused" could just mean
"this machine cannot speak TLS 1.1 at all" and the test would prove nothing."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import stripe
import trustme
from django.core.exceptions import ImproperlyConfigured

from billing.stripe.gateway import Gateway, GatewayError, Permanent, client, configure_module_client

HOST = "127.0.0.1"
CUSTOMER = {"id": "cus_x", "object": "customer", "name": "Loopback", "metadata": {}}


@dataclass
class TlsLog:
    versions: list[str] = field(default_factory=list)  # negotiated, per handshake that succeeded
    failures: list[str] = field(default_factory=list)  # reasons, per handshake that failed
    paths: list[str] = field(default_factory=list)
    open_connections: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)

    def settled(self, timeout: float = 5.0) -> TlsLog:
        """The log once every accepted connection is handled (the server records a failed
        handshake a moment after the client has seen it)."""
        with self.changed:
            assert self.changed.wait_for(lambda: self.open_connections == 0, timeout), "a connection hangs"
        return self


class _Handler(BaseHTTPRequestHandler):
    server: _TlsServer

    def do_GET(self) -> None:
        self.server.log.paths.append(self.path)
        redirect_to = getattr(self.server, "redirect_to", None)
        if redirect_to and "_moved" in self.path:
            self.send_response(307)  # a downgrade: "the same request, over plain HTTP there"
            self.send_header("Location", f"{redirect_to}/v1/customers/cus_x")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.split("?")[0] == "/v1/customers/cus_x":
            status, body = 200, CUSTOMER
        else:
            status, body = 404, {"error": {"type": "invalid_request_error", "message": "No such object"}}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Request-Id", "req_loopback")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _TlsServer(ThreadingHTTPServer):
    """An HTTPS server that handshakes in the handler thread and records the outcome."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.log = TlsLog()
        super().__init__((HOST, 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.log.changed:  # counted before the handshake, so before the client can fail
            self.log.open_connections += 1
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            self._handshake_and_serve(request, client_address)
        finally:
            with self.log.changed:
                self.log.open_connections -= 1
                self.log.changed.notify_all()

    def _handshake_and_serve(self, request: Any, client_address: Any) -> None:
        request.settimeout(5)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.log.failures.append(getattr(exc, "reason", None) or type(exc).__name__)
            return
        self.log.versions.append(str(tls.version()))
        try:
            super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up is part of these tests, not noise for stderr


@contextlib.contextmanager
def https_server(context: ssl.SSLContext, *, redirect_to: str | None = None) -> Iterator[tuple[str, TlsLog]]:
    server = _TlsServer(context)
    server.redirect_to = redirect_to  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://{HOST}:{server.server_address[1]}", server.log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _PlainServer(ThreadingHTTPServer):
    """A plain-HTTP server (what an http:// Stripe base, or a downgrade, would reach)."""

    daemon_threads = True

    def __init__(self) -> None:
        self.log = TlsLog()
        super().__init__((HOST, 0), _Handler)


@contextlib.contextmanager
def http_server() -> Iterator[tuple[str, TlsLog]]:
    server = _PlainServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}", server.log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _legacy(context: ssl.SSLContext, *, minimum: bool = False, maximum: bool = False) -> None:
    """TLS 1.0–1.1 on OpenSSL 3: Python deprecates the enum members, OpenSSL 3 offers the
    versions only at security level 0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if minimum:
            context.minimum_version = ssl.TLSVersion.TLSv1
        if maximum:
            context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_pem(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tls") / "test-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    return context


@pytest.fixture
def tls11_server(ca: trustme.CA) -> Iterator[tuple[str, TlsLog]]:
    context = server_context(ca.issue_cert(HOST))
    _legacy(context, minimum=True, maximum=True)
    with https_server(context) as served:
        yield served


@pytest.fixture
def tls12_server(ca: trustme.CA) -> Iterator[tuple[str, TlsLog]]:
    context = server_context(ca.issue_cert(HOST))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with https_server(context) as served:
        yield served


@pytest.fixture(autouse=True)
def short_timeouts(settings):
    settings.STRIPE_CONNECT_TIMEOUT_SECONDS = 2
    settings.STRIPE_READ_TIMEOUT_SECONDS = 2
    settings.STRIPE_MAX_NETWORK_RETRIES = 2  # a retryable failure would show as a second handshake


def permissive_get(url: str, ca_pem: str, path: str) -> tuple[str, bytes]:
    """A raw client that accepts TLS 1.0+ (still verifying the certificate and the name)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = True
    context.load_verify_locations(cafile=ca_pem)
    _legacy(context, minimum=True)
    port = int(url.rsplit(":", 1)[1])
    with (
        socket.create_connection((HOST, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        version = str(tls.version())  # before the server hangs up: a closed socket has none
        tls.sendall(f"GET {path} HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
        return version, b"".join(chunks)


def ssl_error_in_chain(exc: BaseException) -> ssl.SSLError | None:
    """The ssl.SSLError under stripe's APIConnectionError → requests' SSLError → urllib3."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        stack.extend(a for a in current.args if isinstance(a, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
    return None


def test_it_can_reach_the_tls11_server_with_a_permissive_client_at_all(tls11_server, ca_pem):
    # The control: without it, the refusal below could be this OpenSSL's, not our client's.
    url, log = tls11_server
    try:
        version, answer = permissive_get(url, ca_pem, "/v1/customers/cus_x")
    except ssl.SSLError as exc:
        pytest.skip(f"this OpenSSL ({ssl.OPENSSL_VERSION}) cannot do TLS 1.1 even at SECLEVEL=0: {exc}")
    assert version == "TLSv1.1"
    log.settled()
    assert log.versions == ["TLSv1.1"]
    assert answer.startswith(b"HTTP/1.0 200") and b'"cus_x"' in answer


def test_it_refuses_a_server_that_offers_only_tls_1_1(tls11_server, ca_pem):
    url, log = tls11_server
    try:
        permissive_get(url, ca_pem, "/")
    except ssl.SSLError as exc:
        pytest.skip(f"this OpenSSL ({ssl.OPENSSL_VERSION}) cannot do TLS 1.1 even at SECLEVEL=0: {exc}")
    log.settled()
    assert log.versions == ["TLSv1.1"]

    with pytest.raises(stripe.APIConnectionError) as raised:
        client(api_base=url, ca_file=ca_pem).v1.customers.retrieve("cus_x")
    cause = ssl_error_in_chain(raised.value)
    assert cause is not None, f"not an SSL failure: {raised.value!r}"
    assert cause.reason == "TLSV1_ALERT_PROTOCOL_VERSION"  # our client's alert: the version is too old
    log.settled()
    assert log.failures == ["UNSUPPORTED_PROTOCOL"]  # one attempt: an SSL error is not retried
    assert log.versions == ["TLSv1.1"] and log.paths == ["/"]  # only the control's request got through

    # Through the gateway the same refusal is a mapped error, never an answer.
    with pytest.raises(GatewayError) as mapped:
        Gateway(client(api_base=url, ca_file=ca_pem)).invoice_retrieve(stripe_invoice_id="in_x")
    assert ssl_error_in_chain(mapped.value).reason == "TLSV1_ALERT_PROTOCOL_VERSION"
    log.settled()
    assert log.paths == ["/"] and log.failures == ["UNSUPPORTED_PROTOCOL"] * 2


def test_it_accepts_a_tls_1_2_or_newer_server(tls12_server, ca_pem):
    url, log = tls12_server
    customer = client(api_base=url, ca_file=ca_pem).v1.customers.retrieve("cus_x")
    assert customer["id"] == "cus_x" and customer["object"] == "customer"
    log.settled()
    assert log.versions and log.versions[0] in ("TLSv1.2", "TLSv1.3")
    assert log.paths == ["/v1/customers/cus_x"] and log.failures == []


def test_it_negotiates_tls_1_2_with_a_server_capped_at_1_2(ca, ca_pem):
    context = server_context(ca.issue_cert(HOST))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with https_server(context) as (url, log):
        assert client(api_base=url, ca_file=ca_pem).v1.customers.retrieve("cus_x")["id"] == "cus_x"
    log.settled()
    assert log.versions == ["TLSv1.2"]


def test_it_refuses_a_certificate_from_an_unknown_ca(ca_pem):
    stranger = trustme.CA()  # a valid chain for 127.0.0.1, but not from the CA we trust
    with https_server(server_context(stranger.issue_cert(HOST))) as (url, log):
        with pytest.raises(stripe.APIConnectionError) as raised:
            client(api_base=url, ca_file=ca_pem).v1.customers.retrieve("cus_x")
        with pytest.raises(GatewayError):
            Gateway(client(api_base=url, ca_file=ca_pem)).invoice_retrieve(stripe_invoice_id="in_x")
    cause = ssl_error_in_chain(raised.value)
    assert cause is not None and cause.reason == "CERTIFICATE_VERIFY_FAILED"
    log.settled()
    assert log.paths == [] and log.versions == []
    assert len(log.failures) == 2  # one handshake per call: not retried


def test_it_refuses_a_certificate_for_another_host_name(ca, ca_pem):
    with (
        https_server(server_context(ca.issue_cert("stripe.invalid"))) as (url, log),
        pytest.raises(stripe.APIConnectionError) as raised,
    ):
        client(api_base=url, ca_file=ca_pem).v1.customers.retrieve("cus_x")
    cause = ssl_error_in_chain(raised.value)
    assert cause is not None and cause.reason == "CERTIFICATE_VERIFY_FAILED"
    assert "127.0.0.1" in str(cause)  # the name check, not the chain
    log.settled()
    assert log.paths == []


def test_it_trusts_the_test_ca_only_through_ca_file(ca):
    # Without our CA the loopback server is refused: verification is not merely lenient.
    with (
        https_server(server_context(ca.issue_cert(HOST))) as (url, log),
        pytest.raises(stripe.APIConnectionError) as raised,
    ):
        client(api_base=url).v1.customers.retrieve("cus_x")
    cause = ssl_error_in_chain(raised.value)
    assert cause is not None and cause.reason == "CERTIFICATE_VERIFY_FAILED"
    log.settled()
    assert log.paths == []


# --- Plain HTTP: no TLS, so no TLS floor (issue 8, defect 6) ---------------------------------


@pytest.fixture
def module_client_restored() -> Iterator[None]:
    """configure_module_client() sets stripe-python's module-level client: put it back."""
    saved = (stripe.api_base, stripe.api_version, stripe.max_network_retries, stripe.default_http_client)
    try:
        yield
    finally:
        stripe.api_base, stripe.api_version, stripe.max_network_retries, stripe.default_http_client = saved


@pytest.mark.usefixtures("module_client_restored")
@pytest.mark.parametrize("module", ["config.settings.production", "config.settings.base"])
def test_it_refuses_a_plain_http_stripe_base_outside_development_and_test_settings(settings, monkeypatch, module):
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", module)  # what the gateway asks (not settings.SETTINGS_MODULE)
    settings.DEBUG = False
    with http_server() as (url, log):
        with pytest.raises(ImproperlyConfigured, match="STRIPE_API_BASE"):
            client(api_base=url)
        settings.STRIPE_API_BASE = url
        with pytest.raises(ImproperlyConfigured, match="STRIPE_API_BASE"):
            client()
        with pytest.raises(ImproperlyConfigured, match="STRIPE_API_BASE"):
            configure_module_client()  # dj-stripe's client (called at start-up)
    assert log.paths == []


@pytest.mark.usefixtures("module_client_restored")
@pytest.mark.parametrize(
    ("module", "debug"),
    [("config.settings.test", False), ("config.settings.local", False), ("config.settings.base", True)],
)
def test_it_still_speaks_plain_http_to_localstripe_in_development_and_tests(settings, monkeypatch, module, debug):
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", module)
    settings.DEBUG = debug
    with http_server() as (url, log):
        assert client(api_base=url).v1.customers.retrieve("cus_x")["id"] == "cus_x"
        settings.STRIPE_API_BASE = url
        configure_module_client()
        assert stripe.Customer.retrieve("cus_x", api_key="sk_test_" + "0" * 24)["id"] == "cus_x"
    assert log.paths == ["/v1/customers/cus_x"] * 2


def test_it_never_follows_a_redirect_from_https_to_plain_http(ca, ca_pem):
    """Even in test settings (where a plain-http base is allowed), a client on an https base
    speaks TLS only: a redirect to http:// is refused, not followed in clear."""
    with (
        http_server() as (plain_url, plain_log),
        https_server(server_context(ca.issue_cert(HOST)), redirect_to=plain_url) as (url, log),
    ):
        with pytest.raises(stripe.APIConnectionError) as raised:
            client(api_base=url, ca_file=ca_pem).v1.customers.retrieve("cus_moved")
        assert "plain HTTP" in str(raised.value)
        with pytest.raises(Permanent) as mapped:  # not retried, not left pending
            Gateway(client(api_base=url, ca_file=ca_pem)).invoice_retrieve(stripe_invoice_id="in_moved")
        assert isinstance(mapped.value.__cause__, stripe.APIConnectionError)
        assert "plain HTTP" in str(mapped.value.__cause__)
        assert client(api_base=url, ca_file=ca_pem).v1.customers.retrieve("cus_x")["id"] == "cus_x"
    log.settled()
    assert [p.split("?")[0] for p in log.paths] == [
        "/v1/customers/cus_moved",
        "/v1/invoices/in_moved",
        "/v1/customers/cus_x",
    ]
    assert plain_log.paths == []
