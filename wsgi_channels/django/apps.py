"""The Django app config of ``wsgi_channels.django``."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks


class WsgiChannelsConfig(AppConfig):  # type: ignore[misc]
    name = "wsgi_channels.django"
    label = "wsgi_channels"
    verbose_name = "WSGI Channels"

    def ready(self) -> None:
        checks.register(check_listed_before_staticfiles)


def check_listed_before_staticfiles(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Warn when an app listed earlier brings its own ``runserver`` (staticfiles does):
    Django runs the first one found, and ours would never serve WebSockets."""
    from django.apps import apps
    from django.core.management import find_commands

    names = [config.name for config in apps.get_app_configs()]
    ours = names.index("wsgi_channels.django")
    for config in list(apps.get_app_configs())[:ours]:
        if "runserver" in find_commands(f"{config.path}/management"):
            return [
                checks.Warning(
                    f"{config.name} is listed before wsgi_channels.django in "
                    "INSTALLED_APPS, so its runserver is used and WebSockets are not served.",
                    hint='Put "wsgi_channels.django" first in INSTALLED_APPS.',
                    id="wsgi_channels.W001",
                )
            ]
    return []
