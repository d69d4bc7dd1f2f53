"""``manage.py runinterface``: the interface server, on the project's layer."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from wsgi_channels.django.serving import layer_url


class Command(BaseCommand):  # type: ignore[misc]
    help = "Runs the wsgi-channels interface server (HTTP and WebSockets) on the project's layer."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "addrport",
            nargs="?",
            default="127.0.0.1:8000",
            help="HOST:PORT to listen on (default 127.0.0.1:8000).",
        )
        parser.add_argument(
            "--layer",
            dest="layer_url",
            default=None,
            metavar="URL",
            help="Channel layer URL (default: the WSGI_CHANNELS_LAYER setting).",
        )
        parser.add_argument(
            "--workers", type=int, default=1, help="Interface server processes sharing the socket."
        )
        parser.add_argument(
            "--allowed-origin",
            dest="allowed_origins",
            action="append",
            default=[],
            metavar="PATTERN",
            help="Extra WebSocket origin.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from wsgi_channels import cli
        from wsgi_channels.layers import DEFAULT_LAYER_URL, _django_setting

        addrport = options["addrport"]
        if addrport.isdigit():
            addrport = f"127.0.0.1:{addrport}"
        url = layer_url(options["layer_url"]) or _django_setting() or DEFAULT_LAYER_URL
        argv = [
            "interface",
            "--bind",
            addrport,
            "--layer",
            url,
            "--workers",
            str(options["workers"]),
        ]
        for origin in options["allowed_origins"]:
            argv += ["--allowed-origin", origin]
        try:
            cli.cli.main(args=argv, prog_name="manage.py runinterface", standalone_mode=False)
        except cli.UsageProblem as exc:
            raise CommandError(str(exc)) from None
