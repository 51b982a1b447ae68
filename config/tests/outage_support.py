"""Throwaway services for the outage tests (config/tests/test_outages.py): a PostgreSQL
cluster, a Redis server and the application itself, each a subprocess of the test, on free
ports of 127.0.0.1, with its files in its own temporary folder. Never the machine's shared
PostgreSQL (5432) or Redis (6379).

    with PgCluster.create() as pg:         # initdb + pg_ctl start (as `postgres` when root)
        pg.stop(); pg.start()               # the outage and the recovery
    with RedisServer.start() as redis_:     # redis-server --port N, no persistence
        redis_.stop(); redis_.restart()     # same port
    with AppServer.start(env) as app:       # manage.py runserver --noreload --nothreading
        http("GET", app.url + "/api/v1/offices/", token=...)
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for(predicate: Any, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} not ready after {timeout} s\n{tail}")


# --- PostgreSQL -----------------------------------------------------------------------


def pg_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian layout, else PATH), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def pg_unavailable_reason() -> str | None:
    """Why a throwaway cluster cannot be made here, or None."""
    bindir = pg_bin_dir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        return "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` OS user to run initdb/pg_ctl as"
        if shutil.which("runuser") is None:
            return "running as root without `runuser` to run initdb/pg_ctl as `postgres`"
    return None


@dataclass
class PgCluster:
    bindir: Path
    folder: Path
    port: int
    database: str = "billing"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    @property
    def url(self) -> str:
        # connect_timeout: a host that does not answer fails the request in seconds, not minutes.
        return f"postgres://postgres@{HOST}:{self.port}/{self.database}?connect_timeout=3&conn_max_age=60"

    def conninfo(self, dbname: str) -> str:
        return f"host={HOST} port={self.port} user=postgres dbname={dbname}"

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = list(argv)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.folder)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stdout}{result.stderr}")
        return result

    @classmethod
    @contextlib.contextmanager
    def create(cls) -> Iterator[PgCluster]:
        bindir = pg_bin_dir()
        assert bindir is not None
        folder = Path(tempfile.mkdtemp(prefix="outage-pg-"))
        if os.geteuid() == 0:
            shutil.chown(folder, user="postgres", group="postgres")
        cluster = cls(bindir=bindir, folder=folder, port=free_port())
        try:
            cluster._run(
                str(bindir / "initdb"), "-D", str(cluster.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                "--no-sync", "--no-instructions",
            )  # fmt: skip
            cluster.start()
            import psycopg

            with psycopg.connect(cluster.conninfo("postgres"), autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{cluster.database}"')
            yield cluster
        finally:
            with contextlib.suppress(Exception):
                cluster.stop()
            shutil.rmtree(folder, ignore_errors=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses={HOST} -c fsync=off -c full_page_writes=off"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


# --- Redis ----------------------------------------------------------------------------


@dataclass
class RedisServer:
    folder: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @classmethod
    @contextlib.contextmanager
    def start(cls) -> Iterator[RedisServer]:
        folder = Path(tempfile.mkdtemp(prefix="outage-redis-"))
        server = cls(folder=folder, port=free_port())
        try:
            server.restart()
            yield server
        finally:
            server.stop()
            shutil.rmtree(folder, ignore_errors=True)

    def restart(self) -> None:
        argv = [
            "redis-server", "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
            "--dir", str(self.folder),
        ]  # fmt: skip
        with (self.folder / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder)
        wait_for(lambda: answers(self.port), 10, "redis-server", self.folder / "redis.log")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        wait_for(lambda: not answers(self.port), 5, "redis-server shutdown")


# --- The application ------------------------------------------------------------------


def app_env(**extra: str) -> dict[str, str]:
    """The environment of an application subprocess: ours, minus what the test run set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_", "CELERY_", "STRIPE_"))}
    env.update({"PYTHONUNBUFFERED": "1", "CACHE_URL": "", **extra})
    return env


def manage(env: dict[str, str], *argv: str, timeout: float = 180) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {argv[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def shell_json(env: dict[str, str], code: str, timeout: float = 180) -> Any:
    """Run `code` in `manage.py shell`; it prints one JSON document as its last line."""
    out = manage(env, "shell", "-c", code, timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


@dataclass
class AppServer:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, limit: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-limit:] if self.log.exists() else ""

    @classmethod
    @contextlib.contextmanager
    def start(cls, env: dict[str, str], folder: Path) -> Iterator[AppServer]:
        """One process, one thread (`--nothreading`): every request shares its database
        connection (`conn_max_age` in the URL), so a stale one must be noticed and replaced."""
        port = free_port()
        log = folder / f"app-{port}.log"
        argv = [sys.executable, "manage.py", "runserver", f"{HOST}:{port}", "--noreload", "--nothreading"]
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        server = cls(proc=proc, port=port, log=log)
        try:
            wait_for(lambda: answers(port) or proc.poll() is not None, 60, "runserver", log)
            if proc.poll() is not None:
                raise RuntimeError(f"runserver exited ({proc.returncode}):\n{server.log_tail()}")
            yield server
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float
    data: Any = field(default=None)


def http(
    method: str,
    url: str,
    *,
    token: str | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    """One request with a short client timeout: a hang fails the test instead of stalling it."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if token:
        request.add_header("Authorization", f"Token {token}")
    if body is not None and "Content-Type" not in (headers or {}):
        request.add_header("Content-Type", "application/json")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # our own loopback app
            status, got_headers, raw = response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        status, got_headers, raw = exc.code, dict(exc.headers.items()), exc.read()
    seconds = time.monotonic() - started
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = None
    return Reply(status=status, headers=got_headers, body=raw, seconds=seconds, data=data)
