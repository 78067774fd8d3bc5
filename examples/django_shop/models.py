from django.db import models


class Order(models.Model):  # type: ignore[misc] # Django ships no types
    number = models.CharField(max_length=20, unique=True)

    def __str__(self) -> str:
        return str(self.number)


class Reservation(models.Model):  # type: ignore[misc]
    order_number = models.CharField(max_length=20, unique=True)

    def __str__(self) -> str:
        return str(self.order_number)
