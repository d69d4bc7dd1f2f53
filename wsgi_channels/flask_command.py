"""``flask channels run``: Flask's development command, with WebSockets.

Installed as a ``flask.commands`` entry point, so any Flask project with wsgi-channels
installed has it::

    flask --app APP channels run [--host 127.0.0.1] [--port 8000] [--layer URL]
                                 [--threads N] [--reload/--no-reload]
                                 [--metrics HOST:PORT]
    flask --app APP --debug channels run     # debug mode and the reloader

It serves the app as ``wsgi-channels run`` does (the interface server and a worker in
one process), with the app Flask's ``--app`` finds and, like ``flask run``, the reloader
on under ``--debug``.
"""

from __future__ import annotations

import sys

import click
from flask.cli import AppGroup, ScriptInfo, pass_script_info
from flask.helpers import get_debug_flag

from wsgi_channels import cli
from wsgi_channels.layers import LAYER_ENV
from wsgi_channels.layers.base import ConfigurationError

__all__ = ["channels"]

channels = AppGroup("channels", help="wsgi-channels: WebSockets and server push.")


@channels.command("run", with_appcontext=False)
@click.option("--host", "-h", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", "-p", type=int, default=8000, show_default=True, help="Port to bind.")
@click.option(
    "--layer",
    "layer_url",
    envvar=LAYER_ENV,
    default=None,
    metavar="URL",
    help=f"Channel layer URL. [env: {LAYER_ENV}]",
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=8, show_default=True, help="App threads."
)
@click.option(
    "--reload/--no-reload",
    default=None,
    help="Restart when a Python file changes. On by default under --debug.",
)
@cli.metrics_option
@pass_script_info
def run_command(
    info: ScriptInfo,
    host: str,
    port: int,
    layer_url: str | None,
    threads: int,
    reload: bool | None,
    metrics_address: str | None,
) -> None:
    """Serve the app for development: HTTP and WebSockets, one process."""
    from werkzeug._reloader import run_with_reloader
    from werkzeug.serving import is_running_from_reloader

    from wsgi_channels.inprocess import layer_description, serve_app

    if reload is None:
        reload = get_debug_flag()
    try:  # once, here, rather than in every process the reloader starts
        cli._check_metrics(metrics_address)
    except (cli.UsageProblem, ConfigurationError) as exc:
        raise click.UsageError(str(exc)) from None

    def announce(bound: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        click.echo(f" * Running on http://{shown}:{bound} (Press CTRL+C to quit)")
        click.echo(f" * Channel layer: {cli.shown_layer_url(layer_description(layer_url))}")

    def serve() -> None:
        try:
            serve_app(
                info.load_app(),
                host,
                port,
                threads=threads,
                layer_url=layer_url,
                on_bind=None if reload else announce,
                metrics_address=metrics_address,
            )
        except (cli.UsageProblem, ConfigurationError) as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.stderr.flush()
            if reload:
                import os

                os._exit(2)  # sys.exit() would not end the process from the reloader's thread
            sys.exit(2)

    if not reload:
        serve()
        return
    if not is_running_from_reloader():
        click.echo(f" * Debug mode: {'on' if get_debug_flag() else 'off'}")
        announce(port)
    run_with_reloader(serve)
