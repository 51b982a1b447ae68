"""`make run`: the whole development stack in one foreground process.

Run from the project root as `.venv/bin/python -m scripts.devserver`. It loads `.env`,
migrates, then starts and supervises:

- localstripe on `STRIPE_PORT` (default 8420), with `TMPDIR=var/localstripe/`, so its
  pickled store survives restarts beside the database (through our launcher
  devtools/localstripe/: localstripe itself ignores TMPDIR); `--from-scratch` only when the
  SQLite database did not exist yet. Then it seeds the demo history against it
  (`seed_demo`, which prints the logins);
- a Celery worker with embedded beat (filesystem broker under `var/celery-broker/` unless
  `CELERY_BROKER_URL` says otherwise; the beat scheduler comes from the settings);
- Django's runserver on 127.0.0.1:`WEB_PORT` (default 8000), with autoreload.

`STRIPE_API_BASE` is exported to the children as `http://127.0.0.1:<STRIPE_PORT>` unless
already set. Each child runs in its own process group, so one Ctrl-C (or SIGTERM) reaches
this launcher only, which stops every child (SIGTERM to its group, SIGKILL after a
timeout) and exits 0. If a child dies on its own, the others are stopped and the launcher
exits 1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO
from urllib.parse import urlsplit

import environ

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
START_TIMEOUT = 30.0  # seconds for a server to answer on its port

_print_lock = threading.Lock()

# localstripe runs through our launcher (devtools/localstripe/): it adds what we use
# from Stripe's API and keeps its store in $TMPDIR (var/localstripe/ here).


def say(message: str) -> None:
    with _print_lock:
        sys.stdout.write(f"[devserver] {message}\n")
        sys.stdout.flush()


class Stop:
    """Set by SIGINT/SIGTERM; the main loop polls it (handlers only set a flag)."""

    def __init__(self) -> None:
        self.requested = False
        self.force = False  # a second signal: do not wait for a graceful stop
        self.signal_name = ""

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            self.force = True
            return
        self.requested = True
        self.signal_name = signal.Signals(signum).name


class Child:
    """A supervised process in its own process group, its output prefixed with its name."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], *, prefix_output: bool = True) -> None:
        self.name = name
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv built here, no shell
            list(argv),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if prefix_output else None,
            stderr=subprocess.STDOUT if prefix_output else None,
            start_new_session=True,
        )
        self._pump: threading.Thread | None = None
        if prefix_output and self.proc.stdout is not None:
            self._pump = threading.Thread(target=self._copy, args=(self.proc.stdout,), daemon=True)
            self._pump.start()

    def _copy(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            with _print_lock:
                sys.stdout.write(f"[{self.name}] {line}\n")
                sys.stdout.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is already gone
            os.killpg(self.proc.pid, signum)

    def wait_group_gone(self, timeout: float = 2.0) -> None:
        """Until no live process is left in the group (e.g. the embedded beat). Zombies
        count as gone: they are dead and init reaps them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_has_live_member(self.proc.pid):
            time.sleep(0.05)

    def join_output(self) -> None:
        if self._pump is not None:
            self._pump.join(timeout=2)


def _group_has_live_member(pgid: int) -> bool:
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: any member, zombie or not
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            return True
    return False


def stop_all(children: Sequence[Child], stop: Stop | None = None) -> None:
    """SIGTERM every group, wait up to STOP_TIMEOUT (or until a second Ctrl-C), then
    SIGKILL the groups: that also reaches grandchildren left behind (runserver's
    autoreloaded server, the embedded beat)."""
    for child in reversed(children):
        child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(c.alive() for c in children) and time.monotonic() < deadline:
        if stop is not None and stop.force:
            say("second signal: killing what is left")
            break
        time.sleep(0.1)
    for child in reversed(children):
        if child.alive():
            say(f"{child.name} did not stop in time: killing it")
        child.signal_group(signal.SIGKILL)
        child.proc.wait()
        child.wait_group_gone()
        child.join_output()


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def load_env() -> None:
    """`.env` (copied from `.env.example` by the Makefile); variables already set win."""
    env_file = ROOT / ".env"
    if not env_file.exists():
        env_file = ROOT / ".env.example"
        say(".env is missing: using the development defaults of .env.example")
    environ.Env.read_env(str(env_file), overwrite=False)


def child_env(stripe_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    env["PYTHONUNBUFFERED"] = "1"
    if not env.get("STRIPE_API_BASE"):
        env["STRIPE_API_BASE"] = f"http://{HOST}:{stripe_port}"
    env.setdefault("STRIPE_PUSH_ENABLED", "true")  # finalized invoices go to localstripe
    return env


def run_step(name: str, argv: Sequence[str], env: dict[str, str], stop: Stop) -> int | None:
    """Run a setup command to completion; None if a stop was requested meanwhile."""
    say(f"{name}: {' '.join(argv[1:]) if argv[0] == sys.executable else ' '.join(argv)}")
    step = Child(name, argv, env, prefix_output=False)  # unprefixed: seed_demo's login table stays readable
    while step.alive():
        if stop.requested:
            stop_all([step], stop)
            return None
        time.sleep(0.1)
    return step.proc.returncode


def register_webhook(stripe_port: int, web_port: int, env: dict[str, str]) -> None:
    """Point localstripe's webhooks at our endpoint, signed with the development secret
    (localstripe keeps webhook registrations in memory only, so on every start)."""
    secret = env.get("STRIPE_WEBHOOK_SECRET") or ""
    if not secret:
        say("STRIPE_WEBHOOK_SECRET is empty: localstripe will send no webhooks")
        return
    body = urllib.parse.urlencode({"url": f"http://{HOST}:{web_port}/stripe/webhook/", "secret": secret}).encode()
    request = urllib.request.Request(f"http://{HOST}:{stripe_port}/_config/webhooks/dev", data=body, method="POST")
    request.add_header("Authorization", f"Bearer {env.get('STRIPE_SECRET_KEY', '')}")
    try:
        urllib.request.urlopen(request, timeout=5).close()  # noqa: S310 - our own loopback server
    except OSError as exc:
        say(f"could not register the webhook with localstripe: {exc}")


def wait_for_port(child: Child, port: int, stop: Stop) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if stop.requested or not child.alive():
            return False
        if port_answers(port):
            return True
        time.sleep(0.2)
    say(f"{child.name} did not answer on port {port} within {START_TIMEOUT:.0f} s")
    return False


def banner(web_port: int, stripe_port: int, env: dict[str, str]) -> None:
    broker = "filesystem (var/celery-broker/)"
    if env.get("CELERY_BROKER_URL"):
        url = urlsplit(env["CELERY_BROKER_URL"])
        broker = f"{url.scheme}://{url.hostname or ''}{f':{url.port}' if url.port else ''}{url.path}"  # no password
    lines = [
        "",
        "=" * 72,
        "  Development stack is up. Ctrl-C stops everything.",
        f"  Operator console (admin):  http://{HOST}:{web_port}/admin/",
        f"  API:                       http://{HOST}:{web_port}/api/v1/",
        f"  localstripe:               http://{HOST}:{stripe_port}/  (store in var/localstripe/)",
        f"  STRIPE_API_BASE:           {env['STRIPE_API_BASE']}",
        f"  Celery worker + beat:      broker {broker}",
        "  Logins: the table printed above by seed_demo (passwords are new on every start;",
        "          `.venv/bin/python manage.py seed_demo` prints fresh ones at any time).",
        "=" * 72,
        "",
    ]
    with _print_lock:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()


def main() -> int:
    os.chdir(ROOT)
    load_env()
    stripe_port = int(os.environ.get("STRIPE_PORT") or 8420)
    web_port = int(os.environ.get("WEB_PORT") or 8000)
    env = child_env(stripe_port)

    busy = [p for p in (web_port, stripe_port) if port_answers(p)]
    if busy:
        say(f"port(s) {', '.join(map(str, busy))} already in use on {HOST}: is another `make run` going?")
        return 1
    for tool in ("localstripe", "celery"):
        if not (BIN / tool).exists():
            say(
                f"{BIN / tool} is missing: run `make run` (it installs the dev dependencies) or pip install -e '.[dev]'"
            )
            return 1

    (VAR / "localstripe").mkdir(parents=True, exist_ok=True)
    (VAR / "celery-broker" / "processed").mkdir(parents=True, exist_ok=True)

    stop = Stop()
    signal.signal(signal.SIGINT, stop.handler)
    signal.signal(signal.SIGTERM, stop.handler)

    python = sys.executable
    # A new development database gets a new Stripe store: the demo history seed_demo builds
    # on a new database would otherwise meet the customers and invoice numbers of the old one.
    new_database = not os.environ.get("DATABASE_URL") and not (VAR / "db.sqlite3").exists()
    code = run_step("migrate", [python, "manage.py", "migrate", "--noinput"], env, stop)
    if code is None:
        say(f"{stop.signal_name} received during migrate: stopped")
        return 0
    if code != 0:
        say(f"migrate failed (exit code {code}): not starting the servers")
        return 1

    children: list[Child] = []
    try:
        stripe_env = {**env, "TMPDIR": str(VAR / "localstripe")}
        localstripe_argv = [python, "-m", "devtools.localstripe", "--port", str(stripe_port)]  # keeps its store
        if new_database:
            localstripe_argv.append("--from-scratch")
        localstripe = Child("localstripe", localstripe_argv, stripe_env)
        children.append(localstripe)
        if not wait_for_port(localstripe, stripe_port, stop):
            return _finish(children, stop, failed="localstripe")
        # seed_demo builds its backdated history against localstripe (pushes, card payments,
        # a declined card) before any webhook is registered or the web server runs: it
        # delivers the events of that history itself, at their own instants.
        code = run_step("seed_demo", [python, "manage.py", "seed_demo"], env, stop)
        if code is None:
            say(f"{stop.signal_name} received during seed_demo: stopped")
            stop_all(children, stop)
            return 0
        if code != 0:
            say(f"seed_demo failed (exit code {code}): not starting the servers")
            stop_all(children, stop)
            return 1
        register_webhook(stripe_port, web_port, env)
        # The web server (our webhook endpoint) listens before the worker pushes anything:
        # otherwise Stripe's first events (a failed payment) reach nobody and the office
        # looks paid up here while Stripe has attempted and failed (issue 8, item 9).
        web = Child("web", [python, "manage.py", "runserver", f"{HOST}:{web_port}"], env)
        children.append(web)
        if not wait_for_port(web, web_port, stop):
            return _finish(children, stop, failed="web")
        celery_argv = [str(BIN / "celery"), "-A", "config", "worker", "-B", "--pool=solo", "--loglevel=INFO"]
        children.append(Child("celery", celery_argv, env))
        # Beat's first hourly tick comes an hour after a new schedule: ask for one now, so the
        # billing run is current and /health/ready (and the console) see a recent tick.
        tick = [str(BIN / "celery"), "-A", "config", "call", "billing.tasks.billing_run_tick"]
        if run_step("first tick", tick, env, stop) is None:
            return _finish(children, stop)
        banner(web_port, stripe_port, env)

        while True:
            if stop.requested:
                return _finish(children, stop)
            dead = next((c for c in children if not c.alive()), None)
            if dead is not None:
                return _finish(children, stop, failed=dead.name)
            time.sleep(0.2)
    except BaseException:
        stop_all(children, stop)  # a launcher bug: never leave children behind
        raise


def _finish(children: Sequence[Child], stop: Stop, *, failed: str | None = None) -> int:
    if stop.requested:
        say(f"{stop.signal_name} received: stopping {', '.join(c.name for c in children)}")
        stop_all(children, stop)
        say("stopped")
        return 0
    dead = next((c for c in children if c.name == failed), None)
    code = dead.proc.poll() if dead is not None else None
    reason = f"exited with code {code}" if code is not None else "did not start"
    say(f"{failed} {reason}: stopping the others")
    stop_all(children, stop)
    return 1


if __name__ == "__main__":
    sys.exit(main())
