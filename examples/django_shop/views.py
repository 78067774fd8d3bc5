from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_POST
from eventbus_contrib.django import bus

from .handlers import OrderPlaced
from .models import Order


@require_POST  # type: ignore[untyped-decorator] # Django ships no types
def place_order(request: HttpRequest) -> JsonResponse:
    order = Order.objects.create(number=request.POST["number"])
    bus.publish(OrderPlaced(number=order.number), key=order.number)
    if request.POST.get("fail"):  # the request's transaction rolls back: nothing published
        raise RuntimeError("payment refused")
    return JsonResponse({"number": order.number})
