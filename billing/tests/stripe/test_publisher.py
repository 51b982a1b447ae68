"""The publisher (billing/stripe/publisher.py): a request hands its task message over and
answers; one thread per process publishes. The real broker frozen mid-request is proven in
config/tests/test_outages.py; here a stand-in task (its `delay` is ours, not Celery's)
shows the thread's own rules without a broker."""

from __future__ import annotations

import logging
import os
import threading
import time
from types import SimpleNamespace
from typing import Any

from billing.stripe.publisher import Publisher


class StandInTask:
    """Only what the publisher uses of a Celery task: `name`, `app.conf`, `delay`."""

    def __init__(self, *, eager: bool = False, block: threading.Event | None = None, fail: bool = False) -> None:
        self.name = "stand_in"
        self.app = SimpleNamespace(conf=SimpleNamespace(task_always_eager=eager))
        self.sent: list[tuple[Any, ...]] = []
        self.threads: set[str] = set()
        self._block, self._fail = block, fail

    def delay(self, *args: Any) -> None:
        self.threads.add(threading.current_thread().name)
        if self._block is not None:
            self._block.wait(10)
        if self._fail:
            raise ConnectionError("broker down")
        self.sent.append(args)


def test_it_answers_at_once_while_the_broker_blocks_and_sends_in_order_afterwards() -> None:
    unblock = threading.Event()
    task, publisher = StandInTask(block=unblock), Publisher()
    started = time.monotonic()
    for invoice_id in (1, 2, 3):
        publisher.submit(task, invoice_id)
    assert time.monotonic() - started < 0.5
    assert not publisher.flush(0.2)  # still waiting on the broker
    unblock.set()
    assert publisher.flush(5)
    assert task.sent == [(1,), (2,), (3,)] and task.threads == {"task-publisher"}


def test_a_failed_publish_is_logged_and_the_next_one_still_goes(caplog: Any) -> None:
    failing, working, publisher = StandInTask(fail=True), StandInTask(), Publisher()
    with caplog.at_level(logging.ERROR, logger="billing.publisher"):
        publisher.submit(failing, 7)
        publisher.submit(working, 8)
        assert publisher.flush(5)
    assert working.sent == [(8,)]
    assert "could not enqueue stand_in(7,)" in caplog.text and "hourly catch-up" in caplog.text


def test_a_full_queue_drops_the_message_with_a_warning(caplog: Any) -> None:
    unblock = threading.Event()
    task, publisher = StandInTask(block=unblock), Publisher(max_waiting=1)
    with caplog.at_level(logging.WARNING, logger="billing.publisher"):
        publisher.submit(task, 1)  # taken by the thread, blocked
        time.sleep(0.1)
        publisher.submit(task, 2)  # waits in the queue
        publisher.submit(task, 3)  # no room: dropped, found again by the hourly catch-up
    unblock.set()
    assert publisher.flush(5)
    assert task.sent == [(1,), (2,)]
    assert "queue full" in caplog.text


def test_eager_mode_runs_the_task_in_the_callers_thread() -> None:
    task, publisher = StandInTask(eager=True), Publisher()
    publisher.submit(task, 5)
    assert task.sent == [(5,)] and task.threads == {threading.current_thread().name}


def test_a_forked_child_starts_its_own_thread() -> None:
    task, publisher = StandInTask(), Publisher()
    publisher.submit(task, 1)
    assert publisher.flush(5)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread does not exist here
        try:
            publisher.submit(task, 2)
            ok = publisher.flush(5) and task.sent == [(1,), (2,)]
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
