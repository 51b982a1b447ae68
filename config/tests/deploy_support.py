"""Plumbing of the production smoke test (config/tests/test_smoke_production.py).

Run as a module, it serves our localstripe (devtools/localstripe/) over HTTPS with a
certificate of the test's own CA, because the production settings refuse a plain-http
STRIPE_API_BASE (and the gateway's TLS floor needs TLS to exist):

    python -m config.tests.deploy_support localstripe-tls --port N --cert CERT --key KEY

`TMPDIR` decides where its store is pickled, as for `python -m devtools.localstripe`.
"""

from __future__ import annotations

import argparse
import http.client
import ssl
from dataclasses import dataclass
from email.message import Message

HOST = "127.0.0.1"


def localstripe_tls(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m config.tests.deploy_support localstripe-tls")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)

    from aiohttp import web

    from devtools.localstripe.app import build_app

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)
    web.run_app(build_app(), host=HOST, port=args.port, ssl_context=context, print=None)


@dataclass
class Answer:
    status: int
    headers: Message
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name) or ""

    def cookies(self) -> dict[str, str]:
        """Set-Cookie values by cookie name (the whole header, attributes included)."""
        found: dict[str, str] = {}
        for value in self.headers.get_all("Set-Cookie") or []:
            found[value.split("=", 1)[0].strip()] = value
        return found


def through_proxy(
    port: int,
    method: str,
    path: str,
    *,
    host: str,
    client_ip: str,
    https: bool = True,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Answer:
    """A request as our TLS-terminating proxy passes it on: plain HTTP to gunicorn on
    loopback, the public Host, `X-Forwarded-Proto` set (not appended) and the client's
    address appended to `X-Forwarded-For`."""
    sent = {"Host": host, "X-Forwarded-For": client_ip, **(headers or {})}
    if https:
        sent["X-Forwarded-Proto"] = "https"
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return Answer(status=response.status, headers=response.msg, body=response.read())
    finally:
        conn.close()


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["localstripe-tls"]:
        raise SystemExit("usage: python -m config.tests.deploy_support localstripe-tls --port N --cert C --key K")
    localstripe_tls(sys.argv[2:])
