from django.db import migrations

from config.db_triggers import Guard, changed, install

FROZEN_INVOICE = (
    "office_id", "kind", "number", "currency", "subtotal_cents", "total_cents", "period_start",
    "period_end", "is_setup_fee", "plan_id", "finalized_at",
)  # fmt: skip
FROZEN_PLAN = ("code", "currency", "per_patient_cents", "minimum_cents", "setup_fee_cents", "trial_days")
LINE_COLUMNS = (
    "invoice_id", "kind", "patient_id", "patient_ref", "description", "quantity", "unit_amount_cents", "amount_cents",
)  # fmt: skip


def parent_finalized(ref: str) -> str:
    return f"(SELECT status FROM billing_invoice WHERE id = {ref}.invoice_id) <> 'draft'"


GUARDS = [
    Guard(
        name="invoice_frozen_after_finalize",
        table="billing_invoice",
        event="UPDATE",
        when=f"OLD.status <> 'draft' AND (NEW.status = 'draft' OR {changed(FROZEN_INVOICE)})",
        message="a finalized invoice's financial content is frozen",
    ),
    Guard(
        name="invoice_finalized_no_delete",
        table="billing_invoice",
        event="DELETE",
        when="OLD.status <> 'draft'",
        message="a finalized invoice is never deleted",
        postgres_only=True,
    ),
    Guard(
        name="line_insert_only_on_draft",
        table="billing_lineitem",
        event="INSERT",
        when=parent_finalized("NEW"),
        message="lines of a finalized invoice are frozen",
    ),
    Guard(
        name="line_update_only_on_draft",
        table="billing_lineitem",
        event="UPDATE",
        when=f"({parent_finalized('OLD')} OR {parent_finalized('NEW')}) AND {changed(LINE_COLUMNS)}",
        message="lines of a finalized invoice are frozen",
    ),
    Guard(
        name="line_delete_only_on_draft",
        table="billing_lineitem",
        event="DELETE",
        when=parent_finalized("OLD"),
        message="lines of a finalized invoice are frozen",
        postgres_only=True,
    ),
    Guard(
        name="plan_prices_frozen_when_locked",
        table="billing_plan",
        event="UPDATE",
        when=f"OLD.locked = {{true}} AND (NEW.locked = {{false}} OR {changed(FROZEN_PLAN)})",
        message="a plan in use keeps its prices, currency and trial; create a new plan",
    ),
    Guard(
        name="plan_change_append_only",
        table="billing_planchange",
        event="UPDATE",
        when="TRUE",
        message="plan changes are append-only",
    ),
    Guard(
        name="plan_change_no_delete",
        table="billing_planchange",
        event="DELETE",
        when="TRUE",
        message="plan changes are append-only",
        postgres_only=True,
    ),
]


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_initial")]
    operations = [install(GUARDS)]
