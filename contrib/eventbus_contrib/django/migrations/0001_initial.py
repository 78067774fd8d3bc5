"""The outbox, the inbox and the dead letters: the tables of the other stores, made by
Django (see ``eventbus_contrib.django.models``)."""

from __future__ import annotations

from typing import Any

from django.db import migrations, models


class PostgreSQLOnly(migrations.RunSQL):  # type: ignore[misc] # Django ships no types
    """SQL run on PostgreSQL only (``sqlmigrate`` shows it there)."""

    def database_forwards(self, app_label: str, schema_editor: Any, *args: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, *args)

    def database_backwards(self, app_label: str, schema_editor: Any, *args: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, *args)


class Migration(migrations.Migration):  # type: ignore[misc]
    initial = True

    dependencies: list[tuple[str, str]] = []  # noqa: RUF012 - what Django reads

    operations = [  # noqa: RUF012 - what Django reads
        migrations.CreateModel(
            name="OutboxRow",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("envelope_id", models.CharField(max_length=36)),
                ("name", models.CharField(max_length=200)),
                ("destination", models.CharField(max_length=200)),
                ("key", models.CharField(max_length=1024, null=True)),
                ("payload", models.BinaryField()),
                ("created_at", models.FloatField()),
                ("available_at", models.FloatField()),
                ("attempts", models.IntegerField(default=0)),
                ("lease_owner", models.CharField(max_length=200, null=True)),
                ("lease_until", models.FloatField(null=True)),
                ("last_error", models.TextField(null=True)),
                ("first_failed_at", models.FloatField(null=True)),
            ],
            options={
                "db_table": "eventbus_outbox",
                "indexes": [
                    models.Index(fields=["available_at", "id"], name="eventbus_outbox_available"),
                    models.Index(fields=["destination", "key", "id"], name="eventbus_outbox_key"),
                ],
            },
        ),
        # Half of each outbox page left free: the relay updates every row once (its
        # lease) before deleting it, and with room on the page that update is a HOT one,
        # writing no index entries (the SQLAlchemy store does the same).
        PostgreSQLOnly(
            "ALTER TABLE eventbus_outbox SET (fillfactor = 50)",
            "ALTER TABLE eventbus_outbox RESET (fillfactor)",
        ),
        migrations.CreateModel(
            name="InboxMark",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("handler", models.CharField(max_length=200)),
                ("envelope_id", models.CharField(max_length=36)),
                ("processed_at", models.FloatField()),
            ],
            options={
                "db_table": "eventbus_inbox",
                "constraints": [
                    models.UniqueConstraint(
                        fields=("handler", "envelope_id"), name="eventbus_inbox_mark"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="DeadLetterRow",
            fields=[
                ("id", models.CharField(max_length=36, primary_key=True, serialize=False)),
                ("envelope_id", models.CharField(max_length=36)),
                ("event_name", models.TextField()),
                ("handler", models.TextField()),
                ("error_type", models.TextField()),
                ("message", models.TextField()),
                ("traceback", models.TextField()),
                ("attempts", models.IntegerField()),
                ("first_failed_at", models.TextField()),
                ("first_failed_ts", models.FloatField()),
                ("last_failed_at", models.TextField()),
                ("last_failed_ts", models.FloatField()),
                ("payload", models.BinaryField()),
                ("claim_owner", models.TextField(null=True)),
                ("claim_until", models.FloatField(null=True)),
            ],
            options={
                "db_table": "eventbus_dead_letters",
                "indexes": [
                    models.Index(fields=["handler", "last_failed_ts"], name="eventbus_dl_handler"),
                    models.Index(
                        fields=["event_name", "last_failed_ts"], name="eventbus_dl_event_name"
                    ),
                    models.Index(fields=["last_failed_ts", "id"], name="eventbus_dl_last_failed"),
                ],
            },
        ),
    ]
