"""The audit trail export (spec §9): CSV / JSON / JSON Lines, streamed in chunks, with the
list's access rules and filters, formula cells defused, no field beyond the model's, and
the export itself audited.

The view is served here under the path the project's URLconf gives it
(`/api/v1/audit-events/export/`)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from audit.export import EXPORT_FIELDS, stream_csv, stream_json, stream_jsonl
from audit.models import AuditEvent, Outcome
from audit.services import audit_record, audit_seal
from billing.tests.support.factories import OfficeFactory, at
from offices.models import Office, Role
from offices.services import office_member_grant

pytestmark = pytest.mark.django_db

URL = "/api/v1/audit-events/export/"
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=2)

# Exactly the model's columns, in order: nothing joined in (the rows hold no PHI).
COLUMNS = [
    "id",
    "ts",
    "actor_type",
    "actor_id",
    "actor_label",
    "action",
    "target_type",
    "target_id",
    "office_id",
    "outcome",
    "reason",
    "source_ip",
    "request_id",
    "task_id",
    "data",
    "seq",
    "prev_hash",
    "entry_hash",
    "key_id",
]
FORMULAS = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]


@dataclass
class World:
    office_a: Office
    office_b: Office
    superuser: Any
    admin_a: Any  # office billing admin of office A only
    nobody: Any  # a user without any role

    def client(self, user: Any = None) -> Client:
        client = Client()
        if user is not None:
            client.force_login(user)
        return client


@pytest.fixture
def world() -> World:
    users = get_user_model().objects
    with at(T0):
        office_a, office_b = OfficeFactory(name="Office A"), OfficeFactory(name="Office B")
        admin_a = users.create_user(username="admin-a", password="x")
        office_member_grant(office=office_a, user=admin_a, role=Role.OFFICE_BILLING_ADMIN)
    for i, office in enumerate([office_a, office_b, office_a, office_b, None]):
        with at(T0 + timedelta(hours=i + 1)):
            audit_record(
                action="invoice.finalized" if i < 4 else "billing_run.finished",
                target_type="billing.Invoice" if office else "",
                target_id=200 + i if office else None,
                office_id=office.pk if office else None,
                outcome=Outcome.SUCCESS,
                reason=f"event {i}",
                data={"line_count": i, "total_cents": 450 * i},
            )
    audit_seal()
    return World(
        office_a=office_a,
        office_b=office_b,
        superuser=users.create_superuser(username="root", password="x", email="root@platform.example"),
        admin_a=admin_a,
        nobody=users.create_user(username="nobody", password="x"),
    )


def _get(client: Client, query: str = "") -> Any:
    with at(NOW):
        return client.get(URL + query)


def _body(response: Any) -> str:
    assert response.status_code == 200, response.content[:300]
    assert response.streaming
    return b"".join(response.streaming_content).decode()


def _csv(response: Any) -> list[list[str]]:
    return list(csv.reader(io.StringIO(_body(response), newline="")))


def _ids(queryset: Any) -> list[int]:
    return list(queryset.order_by("id").values_list("id", flat=True))


# --- CSV --------------------------------------------------------------------------------


def test_it_exports_csv_with_a_header_and_every_event_oldest_first(world: World) -> None:
    client = world.client(world.superuser)
    expected_ids = _ids(AuditEvent.objects.all())

    response = _get(client, "?format=csv")

    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-events-')
    assert response["Content-Disposition"].endswith('.csv"')
    assert response["Cache-Control"] == "no-store"
    header, *rows = _csv(response)
    assert header == COLUMNS == list(EXPORT_FIELDS)
    assert [int(row[0]) for row in rows] == expected_ids
    assert response["X-Export-Rows"] == str(len(expected_ids))


def test_it_writes_csv_cells_as_iso_utc_times_json_data_and_empty_nulls(world: World) -> None:
    event = AuditEvent.objects.get(reason="event 4")

    rows = _csv(_get(world.client(world.superuser), "?format=csv&action=billing_run.finished"))

    assert len(rows) == 2
    cells = dict(zip(rows[0], rows[1], strict=True))
    assert cells["ts"] == "2026-06-01T17:00:00.000000+00:00"
    assert json.loads(cells["data"]) == {"line_count": 4, "total_cents": 1800}
    assert cells["office_id"] == "" and cells["source_ip"] == ""
    assert (cells["seq"], cells["entry_hash"]) == (str(event.seq), event.entry_hash)


def test_it_defuses_cells_a_spreadsheet_would_run_as_formulas(world: World) -> None:
    for text in FORMULAS:
        audit_record(action="test.formula", actor_type="system", reason=text, target_id=text[:10])
    audit_record(action="test.formula", reason="plain words, a - b = c")

    rows = _csv(_get(world.client(world.superuser), "?format=csv&action=test.formula"))

    reasons = [row[COLUMNS.index("reason")] for row in rows[1:]]
    assert reasons == ["'" + text for text in FORMULAS] + ["plain words, a - b = c"]
    target_ids = [row[COLUMNS.index("target_id")] for row in rows[1 : len(FORMULAS) + 1]]
    assert target_ids == ["'" + text[:10] for text in FORMULAS]


# --- JSON and JSON Lines ------------------------------------------------------------------


def test_it_exports_a_json_array_of_the_models_fields(world: World) -> None:
    response = _get(world.client(world.superuser), "?format=json")

    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"].endswith('.json"')
    events = json.loads(_body(response))
    assert [e["id"] for e in events] == _ids(AuditEvent.objects.exclude(action="audit.exported"))
    assert all(list(e) == COLUMNS for e in events)
    last = [e for e in events if not e["action"].startswith("auth.")][-1]  # logins are audited too
    assert last["data"] == {"line_count": 4, "total_cents": 1800}  # an object, not a string
    assert last["ts"] == "2026-06-01T17:00:00.000000+00:00"
    assert last["office_id"] is None


def test_it_exports_json_lines(world: World) -> None:
    response = _get(world.client(world.superuser), "?format=jsonl")

    assert response["Content-Type"] == "application/x-ndjson"
    lines = _body(response).splitlines()
    assert [json.loads(line)["id"] for line in lines] == _ids(AuditEvent.objects.exclude(action="audit.exported"))


def test_it_exports_csv_when_no_format_is_given(world: World) -> None:
    response = _get(world.client(world.superuser))

    assert response["Content-Type"] == "text/csv; charset=utf-8"


def test_it_exports_an_empty_selection_as_a_header_or_an_empty_array(world: World) -> None:
    client = world.client(world.superuser)

    assert _csv(_get(client, "?format=csv&action=nothing.matches")) == [COLUMNS]
    assert json.loads(_body(_get(client, "?format=json&action=nothing.matches"))) == []
    assert _body(_get(client, "?format=jsonl&action=nothing.matches")) == ""


# --- Filters and access -------------------------------------------------------------------


def test_it_applies_the_lists_filters(world: World) -> None:
    client = world.client(world.superuser)
    a, b = world.office_a.pk, world.office_b.pk

    def exported(query: str) -> set[str]:
        return {e["reason"] for e in json.loads(_body(_get(client, "?format=json&" + query)))}

    assert exported(f"office={b}") == {"event 1", "event 3"}
    assert exported(f"office={a}&action=invoice.finalized") == {"event 0", "event 2"}
    assert exported("since=2026-06-01T14:00:00%2B00:00&until=2026-06-01T16:00:00%2B00:00") == {"event 1", "event 2"}
    assert exported("actor=admin-a") == set()  # the grant was made by the system
    assert exported("action=permission.granted") == {""}


def test_it_gives_an_office_billing_admin_only_their_offices_events(world: World) -> None:
    client = world.client(world.admin_a)

    events = json.loads(_body(_get(client, "?format=json")))

    assert {e["office_id"] for e in events} == {world.office_a.pk}
    assert {e["reason"] for e in events} == {"event 0", "event 2", ""}  # "" is the role grant
    rows = _csv(_get(client, f"?format=csv&office={world.office_b.pk}"))
    assert rows == [COLUMNS]  # filtering cannot widen the scope


@pytest.mark.parametrize("who", ["anonymous", "nobody"])
def test_it_refuses_users_who_may_not_read_the_trail(world: World, who: str) -> None:
    client = world.client(None if who == "anonymous" else world.nobody)

    response = _get(client, "?format=csv")

    # Anonymous: 401 with a token challenge (token authentication comes first); a user
    # without any role: 403.
    assert response.status_code == (401 if who == "anonymous" else 403)
    assert response["Content-Type"] == "application/json"
    assert set(response.json()) == {"message", "extra"}
    assert not AuditEvent.objects.filter(action="audit.exported").exists()


@pytest.mark.parametrize(
    ("query", "field"),
    [("?format=xml", "format"), ("?format=csv&since=yesterday", "since"), ("?format=json&office=A", "office")],
)
def test_it_answers_bad_parameters_with_a_json_error(world: World, query: str, field: str) -> None:
    response = _get(world.client(world.superuser), query)

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json()["extra"] == {"field": field}
    assert not AuditEvent.objects.filter(action="audit.exported").exists()


# --- The export is audited ----------------------------------------------------------------


def test_it_audits_the_export_with_its_filters_and_row_count(world: World) -> None:
    office = world.office_a.pk

    body = _body(_get(world.client(world.superuser), f"?format=csv&office={office}&action=invoice.finalized"))

    entry = AuditEvent.objects.get(action="audit.exported")
    assert (entry.actor_type, entry.actor_label, entry.office_id) == ("user", "root", office)
    assert entry.ts == NOW
    assert entry.data == {
        "format": "csv",
        "filters": {"office": str(office), "action": "invoice.finalized"},
        "rows": 2,
    }
    assert len(body.splitlines()) == 1 + 2


def test_it_leaves_its_own_audit_entry_out_of_the_export(world: World) -> None:
    client = world.client(world.superuser)
    before = _ids(AuditEvent.objects.all())

    first = json.loads(_body(_get(client, "?format=json")))
    second = json.loads(_body(_get(client, "?format=json")))

    assert [e["id"] for e in first] == before
    assert [e["action"] for e in second][-1] == "audit.exported"  # the first export, seen by the second
    assert AuditEvent.objects.filter(action="audit.exported").count() == 2
    assert AuditEvent.objects.filter(action="audit.exported").order_by("id").last().data["rows"] == len(second)


# --- Streaming in chunks --------------------------------------------------------------------


def test_it_streams_chunk_by_chunk_without_losing_or_repeating_rows(world: World) -> None:
    queryset = AuditEvent.objects.order_by("-id")  # the list's order: the export re-orders
    ids = _ids(AuditEvent.objects.all())
    assert len(ids) == 6

    csv_chunks = list(stream_csv(queryset, chunk_size=4))
    json_chunks = list(stream_json(queryset, chunk_size=4))
    jsonl_chunks = list(stream_jsonl(queryset, chunk_size=4))

    assert len(csv_chunks) == 1 + 2  # the header, then two chunks of at most 4 rows
    assert len(jsonl_chunks) == 2
    rows = list(csv.reader(io.StringIO("".join(csv_chunks), newline="")))
    assert [int(r[0]) for r in rows[1:]] == ids
    assert [e["id"] for e in json.loads("".join(json_chunks))] == ids
    assert [json.loads(line)["id"] for line in "".join(jsonl_chunks).splitlines()] == ids
