"""``manage.py runserver``: Django's development server, with WebSockets.

It keeps Django's arguments (``addrport``, ``--noreload``, ``--nothreading``,
``--ipv6``, and staticfiles' ``--nostatic``/``--insecure`` when that app is installed)
and its system checks, migration warning and autoreload; the requests are served by the
interface server and a worker in this process instead of Django's WSGI server.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from django.apps import apps
from django.core.management.base import CommandError

from wsgi_channels.django.serving import layer_url, serve_in_process

if apps.is_installed("django.contrib.staticfiles"):
    from django.contrib.staticfiles.management.commands.runserver import (
        Command as BaseRunserver,
    )
else:
    from django.core.management.commands.runserver import Command as BaseRunserver

#: Worker threads without ``--nothreading``.
THREADS = 8


class Command(BaseRunserver):  # type: ignore[misc]
    help = "Starts a development server for HTTP and WebSockets (wsgi-channels)."

    def add_arguments(self, parser: Any) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--layer",
            dest="layer_url",
            default=None,
            metavar="URL",
            help="Channel layer URL (default: the WSGI_CHANNELS_LAYER setting, then "
            "sqlite:///.wsgi_channels.sqlite3). [env: WSGI_CHANNELS_LAYER]",
        )
        parser.add_argument(
            "--metrics",
            dest="metrics_address",
            default=os.environ.get("WSGI_CHANNELS_METRICS") or None,
            metavar="HOST:PORT",
            help="Serve Prometheus metrics at http://HOST:PORT/metrics (needs the metrics "
            "extra); off by default. [env: WSGI_CHANNELS_METRICS]",
        )

    def on_bind(self, server_port: int) -> None:
        from wsgi_channels.inprocess import layer_description

        super().on_bind(server_port)
        self.stdout.write(f"Channel layer: {layer_description(layer_url(self._layer_option))}")

    def inner_run(self, *args: Any, **options: Any) -> None:
        from django.db import connections
        from django.utils import autoreload

        autoreload.raise_last_exception()
        if not options["skip_checks"]:
            self.stdout.write("Performing system checks...\n\n")
            self.check(display_num_errors=True)
        self.check_migrations()
        for conn in connections.all(initialized_only=True):
            conn.close()
        self._layer_option = options.get("layer_url")
        host = self.addr
        if host == "0":
            host = "0.0.0.0"
        try:
            serve_in_process(
                self.get_handler(*args, **options),
                host,
                int(self.port),
                threads=THREADS if options["use_threading"] else 1,
                given_layer=options.get("layer_url"),
                on_bind=self.on_bind,
                metrics_address=options.get("metrics_address"),
            )
        except CommandError as exc:
            self.stderr.write(f"Error: {exc}")
            # sys.exit() would not end the process from the autoreloader's thread.
            sys.stderr.flush()
            os._exit(1)
        except KeyboardInterrupt:
            sys.exit(0)
