"""What the health checks need that no other table records: when a periodic task last
succeeded (the dead-man switch of the hourly billing run, docs/compliance.md)."""

from __future__ import annotations

from django.db import models


class Heartbeat(models.Model):
    """One row per watched task: the moment it last finished without an error.

    Written by ops.signals when Celery reports the task's success (ops.services), read
    by ops.selectors for /health/ready, the console's alerts and /metrics. No PHI: a task
    name and times only."""

    name = models.CharField(max_length=100, unique=True)
    last_success_at = models.DateTimeField()
    last_task_id = models.CharField(max_length=255, blank=True, default="")
    successes = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} at {self.last_success_at:%Y-%m-%d %H:%M}Z"
