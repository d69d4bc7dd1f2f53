"""A plain Django view that also handles WebSocket events (SPEC.md §6)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseForbidden


def live(request: HttpRequest) -> HttpResponse:
    event = request.META.get("wsgi_channels.websocket")
    if event is None:
        return HttpResponse("open this as a WebSocket")
    if not request.user.is_authenticated:
        return HttpResponseForbidden()
    layer = request.META["wsgi_channels.layer"]
    reply_channel = request.META["wsgi_channels.reply_channel"]
    if event == "connect":
        layer.group_add("staff", reply_channel)
        return HttpResponse(f"hello {request.user.username}", content_type="text/plain")
    if event == "disconnect":
        layer.group_discard("staff", reply_channel)
    return HttpResponse(b"", content_type="text/plain")
