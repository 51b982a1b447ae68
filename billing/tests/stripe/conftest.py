"""Fixtures shared by the Stripe tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from config.celery_app import app


@pytest.fixture
def eager() -> Iterator[None]:
    """The enqueued task runs in this process (Celery's eager mode); the broker's own part of
    the hourly tick is proven with a real worker in engine/test_tasks.py."""
    app.conf.task_always_eager = True
    try:
        yield
    finally:
        app.conf.task_always_eager = False
