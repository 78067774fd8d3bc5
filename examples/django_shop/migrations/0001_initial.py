from django.db import migrations, models


class Migration(migrations.Migration):  # type: ignore[misc] # Django ships no types
    initial = True
    dependencies: list[tuple[str, str]] = []  # noqa: RUF012 - what Django reads
    operations = [  # noqa: RUF012
        migrations.CreateModel(
            name="Order",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("number", models.CharField(max_length=20, unique=True)),
            ],
        ),
        migrations.CreateModel(
            name="Reservation",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("order_number", models.CharField(max_length=20, unique=True)),
            ],
        ),
    ]
