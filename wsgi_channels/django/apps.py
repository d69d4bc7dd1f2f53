"""The Django app config of ``wsgi_channels.django``."""

from __future__ import annotations

from django.apps import AppConfig


class WsgiChannelsConfig(AppConfig):  # type: ignore[misc]
    name = "wsgi_channels.django"
    label = "wsgi_channels"
    verbose_name = "WSGI Channels"
