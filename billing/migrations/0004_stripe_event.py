# Stripe webhook events recorded once by id, and database guards that keep Stripe
# secrets out of dj-stripe's tables (spec §8, §9).

import django.db.models.deletion
from django.db import migrations, models

from config.db_triggers import Guard, install

# dj-stripe 2.11 writes the raw API key into djstripe_apikey.secret the first time it
# syncs anything, and keeps webhook secrets in djstripe_webhookendpoint.secret. Our
# secrets live in the environment only: billing/djstripe_adapter.py resolves the platform
# account without an APIKey row, and these guards make any other path fail loudly.
SECRET_GUARDS = [
    Guard(
        name="djstripe_apikey_never_stored",
        table="djstripe_apikey",
        event="INSERT",
        when="TRUE",
        message="API keys come from the environment only; dj-stripe may not store one (billing/djstripe_adapter.py)",
    ),
    Guard(
        name="djstripe_webhook_secret_never_stored",
        table="djstripe_webhookendpoint",
        event="INSERT",
        when="NEW.secret <> ''",
        message="webhook secrets come from the environment only (STRIPE_WEBHOOK_SECRET)",
    ),
    Guard(
        name="djstripe_webhook_secret_never_updated",
        table="djstripe_webhookendpoint",
        event="UPDATE",
        when="NEW.secret <> ''",
        message="webhook secrets come from the environment only (STRIPE_WEBHOOK_SECRET)",
    ),
]


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0003_guards"),
        ("offices", "0001_initial"),
        ("djstripe", "0003_2_11"),
    ]

    operations = [
        migrations.CreateModel(
            name="StripeEvent",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("event_id", models.CharField(max_length=255, unique=True)),
                ("type", models.CharField(db_index=True, max_length=100)),
                ("livemode", models.BooleanField(default=False)),
                ("api_version", models.CharField(blank=True, default="", max_length=64)),
                ("object_type", models.CharField(blank=True, default="", max_length=64)),
                ("object_id", models.CharField(blank=True, db_index=True, default="", max_length=255)),
                ("stripe_created", models.DateTimeField(help_text="When Stripe created the event.")),
                (
                    "status",
                    models.CharField(
                        choices=[("received", "Received"), ("processed", "Processed"), ("failed", "Failed")],
                        default="received",
                        max_length=16,
                    ),
                ),
                ("attempts", models.PositiveIntegerField(default=1)),
                ("deliveries", models.PositiveIntegerField(default=1)),
                ("outcome", models.CharField(blank=True, default="", max_length=200)),
                ("error", models.CharField(blank=True, default="", max_length=500)),
                (
                    "mirrored",
                    models.BooleanField(default=False, help_text="Handed to dj-stripe's mirror without error."),
                ),
                ("mirror_error", models.CharField(blank=True, default="", max_length=500)),
                ("received_at", models.DateTimeField(auto_now_add=True)),
                ("claimed_at", models.DateTimeField()),
                ("processed_at", models.DateTimeField(blank=True, null=True)),
                (
                    "office",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="offices.office",
                    ),
                ),
            ],
            options={
                "ordering": ["-stripe_created", "-id"],
                "indexes": [models.Index(fields=["status", "claimed_at"], name="billing_str_status_1866f2_idx")],
            },
        ),
        install(SECRET_GUARDS),
    ]
