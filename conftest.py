"""Fixtures shared by every app's tests."""

from __future__ import annotations

import os

import pytest
from django.db import connection


def pytest_report_header(config: pytest.Config) -> str:
    return f"database: {os.environ.get('DATABASE_URL', 'sqlite (default)')}"


@pytest.fixture
def on_postgres() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: run with DATABASE_URL=postgres://… (as .ci/run does)")
