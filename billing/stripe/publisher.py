"""Task messages sent from a thread of their own, so that no request waits on the broker.

A request that commits work for Stripe (a push, a void, a customer) asks for its task
after commit. Publishing there would make the request wait on the broker, and a broker
that accepts the connection but never answers (a half-dead server, a partition) would
hang it for as long as the client's timeouts allow. Here the request only puts the
message on an in-process queue and answers; one daemon thread per process publishes.

Nothing is lost if a message never reaches the broker (the process dies, the queue is
full, the broker is down): what each message asks for is also marked in the database
(`push_state = pending`, `customer_identity_changed_at`) and re-enqueued by the hourly
catch-up (billing/stripe/tasks.py). In Celery's eager mode (some tests), the task runs
at once, in the caller's thread."""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from typing import Any

logger = logging.getLogger("billing.publisher")

MAX_WAITING = 10_000  # messages; beyond that they are dropped (and found again hourly)


class Publisher:
    def __init__(self, max_waiting: int = MAX_WAITING) -> None:
        self._max_waiting = max_waiting
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[Any, tuple[Any, ...]]] = queue.Queue(max_waiting)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def submit(self, task: Any, *args: Any) -> None:
        """Publish `task.delay(*args)` soon, without waiting for the broker."""
        if task.app.conf.task_always_eager:
            task.delay(*args)
            return
        self._ensure_thread()
        try:
            self._queue.put_nowait((task, args))
        except queue.Full:
            logger.warning("publisher queue full: %s%r not sent now (the hourly catch-up sends it)", task.name, args)

    def flush(self, timeout: float) -> bool:
        """Wait until every waiting message has been handed to the broker (or given up);
        True if the queue emptied within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._pid != os.getpid():  # forked (a pre-forking server): start afresh
                self._queue = queue.Queue(self._max_waiting)
                self._thread = None
                self._pid = os.getpid()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="task-publisher", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            task, args = self._queue.get()
            try:
                task.delay(*args)
            except Exception:  # the broker is down or does not answer: found again hourly
                logger.exception("could not enqueue %s%r (the hourly catch-up re-enqueues it)", task.name, args)
            finally:
                self._queue.task_done()


publisher = Publisher()
atexit.register(publisher.flush, 30.0)  # a clean exit (a command, a worker) sends what is waiting
