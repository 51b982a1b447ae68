"""One beat at a time: django-celery-beat's DatabaseScheduler behind a PostgreSQL advisory lock.

Every beat process (`celery -A config beat`, or a worker's embedded `-B`) runs
`LockedDatabaseScheduler` (settings: `CELERY_BEAT_SCHEDULER`). Before it installs or sends
anything, it takes a session-level advisory lock on a database connection of its own. A
second beat finds the lock taken, says once that it is standing by, and tries again every
`BEAT_LOCK_RETRY_SECONDS`. The lock lives exactly as long as the holder's database session:
a beat stopped, or killed with -9 (the kernel closes its socket, PostgreSQL ends the
session), releases it, and the stand-by takes over on its next try. A holder whose lock
connection fails (database restart, network) stops scheduling before its next task and
goes back to standing by: it may no longer be the only one.

The billing run, dunning and pushes are idempotent anyway; the lock keeps a second beat
from doubling the work (and the pushes' attempts). Advisory locks are per database, so
deployments on other databases of the same server do not see each other's lock. The lock
needs a session: the beat must reach PostgreSQL directly or through a session-mode pooler
(not PgBouncer's transaction mode).

On SQLite (development: `make run`, one process by construction) there is no lock; the
scheduler says so once and schedules.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from typing import Any

import psycopg
from django.conf import settings
from django.db import connections
from django_celery_beat.schedulers import DatabaseScheduler

logger = logging.getLogger("config.beat_lock")

LOCK_NAME = "clinic-billing:celery-beat"
# pg_try_advisory_lock(bigint): the first 8 bytes of a hash of the name, signed.
LOCK_KEY = int.from_bytes(hashlib.sha256(LOCK_NAME.encode()).digest()[:8], "big", signed=True)
APPLICATION_NAME = "celery-beat-lock"  # with the pid: pg_stat_activity shows who holds it


class BeatLock:
    """The advisory lock, on a connection of its own (never Django's: Django closes and
    reopens its connections, and a lock taken there would vanish with them)."""

    def __init__(self, *, alias: str = "default", key: int = LOCK_KEY) -> None:
        self.alias = alias
        self.key = key
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def supported(self) -> bool:
        return connections[self.alias].vendor == "postgresql"

    def acquire(self) -> bool:
        """Take the lock if it is free; False if another session holds it or the database
        cannot be reached (logged)."""
        try:
            if self._conn is None or self._conn.closed:
                params = connections[self.alias].get_connection_params()
                self._conn = psycopg.connect(
                    **params, autocommit=True, application_name=f"{APPLICATION_NAME}:{os.getpid()}"
                )
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", [self.key]).fetchone()
        except psycopg.Error as exc:
            logger.warning("beat lock: database not reachable (%s); standing by", type(exc).__name__)
            self.release()
            return False
        return bool(row and row[0])

    def held(self) -> bool:
        """Whether the lock is still ours: the session that took it still answers (an
        advisory lock ends only with its session or an explicit unlock)."""
        if self._conn is None or self._conn.closed:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            self.release()
            return False
        return True

    def release(self) -> None:
        """Close the session, which releases the lock."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # already broken: the lock went with it
                conn.close()


class LockedDatabaseScheduler(DatabaseScheduler):
    """DatabaseScheduler that installs and sends nothing unless it holds the beat lock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._beat_lock = BeatLock()
        self._holding = False
        self._standing_by = False
        self._unlocked_said = False
        self._lock_retry = float(getattr(settings, "BEAT_LOCK_RETRY_SECONDS", 5.0))
        super().__init__(*args, **kwargs)  # calls setup_schedule(): deferred until the lock is ours

    def setup_schedule(self) -> None:
        # Installing the settings' entries writes PeriodicTask rows: only the holder does.
        if self._holding:
            super().setup_schedule()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._lock_ours():
            return self._lock_retry
        return float(super().tick(*args, **kwargs))

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._beat_lock.release()
            self._holding = False

    def _lock_ours(self) -> bool:
        if not self._beat_lock.supported:
            if not self._unlocked_said:
                logger.warning(
                    "beat lock: %s has no advisory locks; scheduling without a lock (development only: run one beat)",
                    connections[self._beat_lock.alias].vendor,
                )
                self._unlocked_said = True
                self._holding = True
                super().setup_schedule()
            return True
        if self._holding:
            if self._beat_lock.held():
                return True
            logger.error("beat lock lost (its database session ended): stopped scheduling, standing by")
            self._holding = False
        if not self._beat_lock.acquire():
            if not self._standing_by:
                logger.warning("beat lock held by another beat: standing by, trying again every %s s", self._lock_retry)
                self._standing_by = True
            return False
        logger.info("beat lock acquired (pid %s): this beat schedules", os.getpid())
        self._holding = True
        self._standing_by = False
        # Start from the schedule as the last holder left it in the database (its
        # last_run_at), not from what this process read while standing by.
        self._initial_read = True
        self._heap = None
        super().setup_schedule()
        return True
