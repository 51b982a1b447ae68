"""Our extended localstripe (devtools/localstripe/) as a subprocess, for tests.

    with run_localstripe() as url:
        client = stripe.StripeClient("sk_test_…", base_addresses={"api": url}, max_network_retries=2)

Each instance gets a free port on 127.0.0.1 and its own TMPDIR (so its pickled store is
its own); nothing is exported into the settings. Usable from a pytest fixture:

    @pytest.fixture(scope="module")
    def stripe_url():
        with run_localstripe() as url:
            yield url
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
HOST = "127.0.0.1"
START_TIMEOUT = 10.0  # seconds for the port to answer
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
START_ATTEMPTS = 3  # a free port can be taken by someone else before the server binds it


class LocalstripeStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def _log_tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _start(
    tmpdir: Path, port: int, *, from_scratch: bool, timeout: float, extra: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "devtools.localstripe", "--port", str(port), *extra]
    if from_scratch:
        argv.append("--from-scratch")
    log_path = tmpdir / f"localstripe-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, "TMPDIR": str(tmpdir)},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalstripeStartError(f"localstripe exited with {proc.returncode}:\n{_log_tail(log_path)}")
        if _answers(port):
            return proc
        time.sleep(0.05)
    _stop(proc)
    raise LocalstripeStartError(f"localstripe did not answer on port {port} within {timeout} s:\n{_log_tail(log_path)}")


@contextlib.contextmanager
def run_localstripe(
    *,
    tmpdir: str | os.PathLike[str] | None = None,
    from_scratch: bool = True,
    timeout: float = START_TIMEOUT,
    extra: tuple[str, ...] = (),
) -> Iterator[str]:
    """Start ``python -m devtools.localstripe --port <free> --from-scratch`` and yield
    its base URL; stop it (terminate, wait, kill) on exit.

    ``tmpdir``: the instance's TMPDIR (default: a new temporary folder, removed afterwards);
    pass one with ``from_scratch=False`` to reload the store a previous instance left there.
    ``extra``: more command-line flags (e.g. ``("--in-memory",)`` for benchmarks).
    """
    own_tmpdir = tmpdir is None
    folder = Path(tempfile.mkdtemp(prefix="localstripe-")) if tmpdir is None else Path(tmpdir)
    proc: subprocess.Popen[bytes] | None = None
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            port = free_port()
            try:
                proc = _start(folder, port, from_scratch=from_scratch, timeout=timeout, extra=extra)
                break
            except LocalstripeStartError:
                if attempt == START_ATTEMPTS:
                    raise
        yield f"http://{HOST}:{port}"
    finally:
        if proc is not None:
            _stop(proc)
        if own_tmpdir:
            shutil.rmtree(folder, ignore_errors=True)
