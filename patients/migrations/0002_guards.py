from django.db import migrations

from config.db_triggers import Guard, install

GUARDS = [
    Guard(
        name="interval_only_closes",
        table="patients_activationinterval",
        event="UPDATE",
        when=(
            "NOT (OLD.deactivated_at IS NULL AND NEW.activated_at = OLD.activated_at "
            "AND NEW.patient_id = OLD.patient_id AND NEW.office_id = OLD.office_id)"
        ),
        message="activation history is append-only: an interval can only be closed once",
    ),
    Guard(
        name="interval_no_delete",
        table="patients_activationinterval",
        event="DELETE",
        when="TRUE",
        message="activation history is append-only",
        postgres_only=True,
    ),
]


class Migration(migrations.Migration):
    dependencies = [("patients", "0001_initial")]
    operations = [install(GUARDS)]
