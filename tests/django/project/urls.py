from django.urls import path

from tests.django.shop import views

urlpatterns = [
    path("<str:db>/orders", views.place_order),
    path("<str:db>/orders/autocommit", views.place_order_autocommit),
    path("<str:db>/orders/async", views.place_order_async),
]
