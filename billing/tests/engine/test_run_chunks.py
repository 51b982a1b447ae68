"""The beat run's bookkeeping is idempotent (spec §6; issue 8, defect 11): a chunk task
delivered twice (acks late, a worker lost mid-chunk) counts once and the run closes only
when every chunk is done; a run whose chunk was lost is marked failed, not left running."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from audit.models import AuditEvent
from billing.engine.run import billing_run_start, billing_runs_fail_stalled, offices_due
from billing.models import BillingRun, BillingRunStatus
from billing.services import patient_activate, subscription_create
from billing.tasks import billing_run_chunk
from billing.tests.support.factories import OfficeFactory, PatientFactory, PlanFactory, at

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 1, 5, 15, tzinfo=UTC)
LATER = T0 + timedelta(days=31, hours=1)


@pytest.fixture
def run_in_two_chunks() -> tuple[BillingRun, list[list[int]]]:
    PlanFactory(code="basic", per_patient_cents=300)
    offices = [OfficeFactory(timezone="UTC") for _ in range(4)]
    with at(T0):
        for office in offices:
            patient_activate(patient=PatientFactory(office=office))
            subscription_create(office=office, plan_code="basic")
    with at(LATER):
        due = offices_due(as_of=LATER)
        chunks = [due[:2], due[2:]]
        run = billing_run_start(as_of=LATER, trigger="beat", office_ids=None, offices_due_count=4, chunks=chunks)
    return run, chunks


def _figures(run: BillingRun) -> tuple[int, ...]:
    run.refresh_from_db()
    return (run.chunks_done, run.offices_done, run.invoices_finalized, run.invoices_opened, run.lines_created)


def test_it_counts_a_redelivered_chunk_once_and_waits_for_the_other(run_in_two_chunks) -> None:
    run, chunks = run_in_two_chunks
    with at(LATER):
        billing_run_chunk.apply(args=(run.pk, chunks[0], 0))
        billing_run_chunk.apply(args=(run.pk, chunks[0], 0))  # delivered again
    assert _figures(run) == (1, 2, 2, 2, 2)
    assert run.status == BillingRunStatus.RUNNING  # the second chunk has not run
    with at(LATER):
        billing_run_chunk.apply(args=(run.pk, chunks[1], 1))
    assert _figures(run) == (2, 4, 4, 4, 4)
    assert run.status == BillingRunStatus.FINISHED
    assert AuditEvent.objects.filter(action="billing_run.finished", target_id=str(run.pk)).count() == 1


def test_it_marks_a_run_whose_chunk_was_lost_failed(run_in_two_chunks) -> None:
    run, chunks = run_in_two_chunks
    with at(LATER):
        billing_run_chunk.apply(args=(run.pk, chunks[0], 0))  # the other chunk's message is lost
    with at(LATER + timedelta(minutes=30)):
        assert billing_runs_fail_stalled() == []  # still within its time
    with at(LATER + timedelta(hours=3)):
        assert billing_runs_fail_stalled() == [run.pk]
        assert billing_runs_fail_stalled() == []  # once
    run.refresh_from_db()
    assert run.status == BillingRunStatus.FAILED and run.finished_at is not None
    event = AuditEvent.objects.get(action="billing_run.stalled", target_id=str(run.pk))
    assert event.data["chunks_pending"] == [1] and event.outcome == "failure"


def test_it_accepts_a_chunk_message_queued_before_chunks_had_numbers(run_in_two_chunks) -> None:
    run, chunks = run_in_two_chunks
    with at(LATER):
        billing_run_chunk.apply(args=(run.pk, chunks[1]))  # the old two-argument message
        billing_run_chunk.apply(args=(run.pk, chunks[0]))
    assert _figures(run) == (2, 4, 4, 4, 4) and run.status == BillingRunStatus.FINISHED
