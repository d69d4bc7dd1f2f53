"""A WSGI app for the security tests: it shows the request headers it was given and
tries to inject CR/LF into its response headers. Import as ``_security_apps:app``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if environ.get("wsgi_channels.websocket") is not None:
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
    if path == "/headers":
        seen = {k: v for k, v in environ.items() if k.startswith(("HTTP_", "CONTENT_"))}
        body = json.dumps(seen).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    if path == "/inject-value":
        start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: pwned=1")])
        return [b"never"]
    if path == "/inject-name":
        start_response("200 OK", [("Set-Cookie: pwned=1\r\nX-Evil", "a")])
        return [b"never"]
    if path == "/inject-nul":
        start_response("200 OK", [("X-Evil", "a\x00b")])
        return [b"never"]
    if path == "/inject-status":
        start_response("200 OK\r\nSet-Cookie: pwned=1", [])
        return [b"never"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
