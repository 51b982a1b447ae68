from django.db import migrations

from config.db_triggers import Guard, changed, install

CONTENT = (
    "ts", "actor_type", "actor_id", "actor_label", "action", "target_type", "target_id", "office_id",
    "outcome", "reason", "source_ip", "request_id", "task_id", "data",
)  # fmt: skip

GUARDS = [
    Guard(
        name="audit_event_append_only",
        table="audit_auditevent",
        event="UPDATE",
        when=f"OLD.entry_hash IS NOT NULL OR {changed(CONTENT)}",
        message="audit events are append-only",
    ),
    Guard(
        name="audit_event_no_delete",
        table="audit_auditevent",
        event="DELETE",
        when="TRUE",
        message="audit events are append-only",
        postgres_only=True,
    ),
]


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]
    operations = [install(GUARDS)]
