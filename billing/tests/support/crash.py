"""Crash tests' plumbing: billing processes (the run command, Celery workers) started as
real subprocesses against the test database, killed with SIGKILL, and a private Redis.

Every process starts in its own session, so `kill9` reaches it and its children (a
prefork worker's pool) at once, like the kernel's OOM killer or a lost machine would.

Run as a module, it starts one of those processes with an optional fault-injection delay
(test-only; production code is untouched):

    python -m billing.tests.support.crash worker [celery worker options…]
    python -m billing.tests.support.crash manage run_billing_cycle …

Environment read by the module entry point:

- ``CRASH_STEP_DELAY``: seconds to sleep at the end of each engine step (after
  `advance_one`, before the step's commit: the office lock and, when it finalized, the
  year's invoice-number row are held), so that a kill lands inside a step's transaction;
- ``CRASH_BROKER_DIR``: the filesystem broker's folder (instead of var/celery-broker, which
  a developer's `make run` uses);
- ``CRASH_VISIBILITY_TIMEOUT``: Redis only, seconds before an unacknowledged message is
  handed out again (kombu's default is 3600), with a restore sweep every second;
- ``CRASH_WORKER_LOST_WAIT``: prefork only, Celery's `worker_lost_wait` (default 10 s).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[3]
HOST = "127.0.0.1"
T = TypeVar("T")


# --- Processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def subprocess_env(db_name: str, **extra: str) -> dict[str, str]:
    """The environment of a billing subprocess: the test database, the test settings, and
    no broker URL of the developer's own unless given in `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRASH_", "CELERY_BROKER_URL"))}
    env.update(
        {
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db_name}",
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class Child:
    """A subprocess in its own session, its output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def kill9(self) -> float:
        """SIGKILL the whole process group; returns the seconds it had been running."""
        lived = time.monotonic() - self.started
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        return lived

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"{self.argv} did not finish within {timeout} s:\n{self.log()}") from None

    def stop(self) -> None:
        """Leave nothing behind (used in `finally`)."""
        if self.alive():
            self.kill9()


def pool_processes(pid: int) -> list[int]:
    """The child processes of `pid` (a prefork worker's pool), from /proc."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children.extend(int(p) for p in text)
    return sorted(children)


def kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def manage(args: list[str], env: dict[str, str], log_path: Path, *, fault: bool = False) -> Child:
    """`manage.py <args>`; through this module (with the fault injection) if `fault`."""
    if fault:
        argv = [sys.executable, "-m", "billing.tests.support.crash", "manage", *args]
    else:
        argv = [sys.executable, "manage.py", *args]
    return Child(argv, env, log_path)


def worker(env: dict[str, str], log_path: Path, *, pool: str = "solo", name: str | None = None) -> Child:
    """A Celery worker (concurrency 1, prefetch 1 as configured) through this module."""
    hostname = name or f"crash-{uuid.uuid4().hex[:8]}@localhost"
    argv = [
        sys.executable,
        "-m",
        "billing.tests.support.crash",
        "worker",
        f"--pool={pool}",
        "--concurrency=1",
        "--loglevel=INFO",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
        "-n",
        hostname,
    ]
    return Child(argv, env, log_path)


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float,
    poll: float = 0.01,
    what: str = "condition",
    child: Child | None = None,
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = f"\n--- {child.argv[2:4]} log ---\n{child.log()}" if child is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{tail}")
        time.sleep(poll)


def filesystem_broker(folder: Path) -> dict[str, Any]:
    for sub in ("", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
        "polling_interval": 0.1,  # seconds between looks at the folder (kombu's default: 1)
    }


@contextlib.contextmanager
def run_redis(timeout: float = 10.0) -> Iterator[str]:
    """A private, memory-only redis-server on a free port (never the shared 6379); yields
    its URL and kills it on exit."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed")
    folder = Path(tempfile.mkdtemp(prefix="crash-redis-"))
    port = free_port()
    child = Child(
        [exe, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no", "--dir", str(folder)],
        dict(os.environ),
        folder / "redis.log",
    )
    try:

        def answers() -> bool:
            if not child.alive():
                raise RuntimeError(f"redis-server exited:\n{child.log()}")
            try:
                with socket.create_connection((HOST, port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(answers, timeout=timeout, poll=0.05, what=f"redis-server on port {port}")
        yield f"redis://{HOST}:{port}/0"
    finally:
        child.stop()
        shutil.rmtree(folder, ignore_errors=True)


# --- Checks on the database --------------------------------------------------------------


def number_gaps(numbers: list[str], prefix: str) -> dict[str, Any]:
    """Invoice numbers `{prefix}-{YYYY}-{NNNNNN}` grouped by year: each year's tails must be
    exactly 1..n. Returns the problems found (empty when gapless and unique)."""
    problems: dict[str, Any] = {}
    by_year: dict[str, list[int]] = {}
    for number in numbers:
        head, year, tail = number.rsplit("-", 2)
        if head != prefix or len(year) != 4 or len(tail) != 6 or not tail.isdigit():
            problems.setdefault("malformed", []).append(number)
            continue
        by_year.setdefault(year, []).append(int(tail))
    for year, tails in by_year.items():
        if sorted(tails) != list(range(1, len(tails) + 1)):
            seen = set(tails)
            problems[year] = {
                "count": len(tails),
                "max": max(tails),
                "missing": sorted(set(range(1, max(tails) + 1)) - seen),
                "repeated": sorted(t for t in seen if tails.count(t) > 1),
            }
    return problems


# --- The module entry point (the subprocesses) ---------------------------------------------


def _inject_step_delay() -> None:
    delay = float(os.environ.get("CRASH_STEP_DELAY", "0") or 0)
    if delay <= 0:
        return
    import billing.engine.run as run_module

    original = run_module.advance_one

    def slow_advance_one(**kwargs: Any) -> bool:
        progressed = original(**kwargs)
        if progressed:
            time.sleep(delay)  # inside the step's transaction, before its commit
        return progressed

    run_module.advance_one = slow_advance_one


def _main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    _inject_step_delay()
    what, rest = argv[0], argv[1:]
    if what == "manage":
        from django.core.management import execute_from_command_line

        execute_from_command_line(["manage.py", *rest])
        return
    if what == "worker":
        from config.celery_app import app

        broker_dir = os.environ.get("CRASH_BROKER_DIR")
        if app.conf.broker_url.startswith("filesystem://"):
            if not broker_dir:
                raise SystemExit("CRASH_BROKER_DIR is required with the filesystem broker")
            app.conf.broker_transport_options = filesystem_broker(Path(broker_dir))
        elif os.environ.get("CRASH_VISIBILITY_TIMEOUT"):
            app.conf.broker_transport_options = {
                "visibility_timeout": float(os.environ["CRASH_VISIBILITY_TIMEOUT"]),
                "unacked_restore_interval": 1,
                "unacked_restore_throttle": 1,
            }
        if os.environ.get("CRASH_WORKER_LOST_WAIT"):
            # How long a prefork worker waits for a dead pool process's result before it
            # raises WorkerLostError (and, with reject_on_worker_lost, requeues); default 10 s.
            app.conf.worker_lost_wait = float(os.environ["CRASH_WORKER_LOST_WAIT"])
        app.worker_main(["worker", *rest])
        return
    raise SystemExit(f"unknown process {what!r}: use 'manage' or 'worker'")


if __name__ == "__main__":
    _main(sys.argv[1:])
