from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from notifications.tests.support import SmtpServer, smtp_server


@pytest.fixture
def smtp(settings: Any) -> Iterator[SmtpServer]:
    """A real SMTP server on a free port, with Django's SMTP backend pointed at it."""
    with smtp_server(settings) as server:
        yield server
