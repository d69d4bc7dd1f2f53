"""``manage.py runworker``: a worker running the project's WSGI application."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from wsgi_channels.django.serving import open_layer


class Command(BaseCommand):  # type: ignore[misc]
    help = "Runs a wsgi-channels worker on the project's WSGI application."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--layer",
            dest="layer_url",
            default=None,
            metavar="URL",
            help="Channel layer URL (default: the WSGI_CHANNELS_LAYER setting).",
        )
        parser.add_argument("--threads", type=int, default=8, help="Threads running the app.")

    def handle(self, *args: Any, **options: Any) -> None:
        from django.core.servers.basehttp import get_internal_wsgi_application

        from wsgi_channels import cli
        from wsgi_channels.layers import set_default_layer
        from wsgi_channels.process import freeze_startup_heap
        from wsgi_channels.worker import Worker

        app = get_internal_wsgi_application()
        layer = open_layer(options["layer_url"])
        set_default_layer(layer)
        cli._configure_logging()
        try:
            worker = Worker(app, layer, threads=max(1, options["threads"]))
            freeze_startup_heap()
            worker.run()
        finally:
            layer.close()
