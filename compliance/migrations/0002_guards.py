from django.db import migrations

from config.db_triggers import Guard, install

GUARDS = [
    Guard(
        name="access_review_append_only",
        table="compliance_accessreview",
        event="UPDATE",
        when="TRUE",
        message="access reviews are append-only: a correction is a new review",
    ),
    Guard(
        name="access_review_no_delete",
        table="compliance_accessreview",
        event="DELETE",
        when="TRUE",
        message="access reviews are append-only",
        postgres_only=True,
    ),
]


class Migration(migrations.Migration):
    dependencies = [("compliance", "0001_initial")]
    operations = [install(GUARDS)]
