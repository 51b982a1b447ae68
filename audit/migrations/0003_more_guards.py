from django.db import migrations

from config.db_triggers import Guard, install

GUARDS = [
    Guard(
        name="audit_event_insert_unsealed",
        table="audit_auditevent",
        event="INSERT",
        when="NEW.seq IS NOT NULL OR NEW.prev_hash IS NOT NULL OR NEW.entry_hash IS NOT NULL",
        message="audit events are inserted unsealed; only the sealer chains them",
    ),
    Guard(
        name="audit_head_only_forward",
        table="audit_auditchainhead",
        event="UPDATE",
        when="NEW.seq < OLD.seq OR NEW.id <> OLD.id",
        message="the audit chain head only moves forward",
    ),
    Guard(
        name="audit_head_no_delete",
        table="audit_auditchainhead",
        event="DELETE",
        when="TRUE",
        message="the audit chain head is never deleted",
        postgres_only=True,
    ),
    Guard(
        name="audit_anchor_append_only",
        table="audit_auditanchor",
        event="UPDATE",
        when="TRUE",
        message="audit anchors are append-only",
    ),
    Guard(
        name="audit_anchor_no_delete",
        table="audit_auditanchor",
        event="DELETE",
        when="TRUE",
        message="audit anchors are append-only",
        postgres_only=True,
    ),
]


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_guards")]
    operations = [install(GUARDS)]
