"""A minimal Django project on eventbus: ``python -m examples.django_shop`` runs it."""
