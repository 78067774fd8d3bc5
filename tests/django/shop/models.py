from django.db import models


class Order(models.Model):
    id = models.CharField(max_length=100, primary_key=True)

    def __str__(self) -> str:
        return self.id


class Reservation(models.Model):
    """Written by a durable handler, in its transaction with its inbox mark."""

    order_id = models.CharField(max_length=100)

    def __str__(self) -> str:
        return self.order_id
