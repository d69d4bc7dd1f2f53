"""Real Flask and Django apps, unmodified, through a real Worker on the memory layer."""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from _worker_helpers import (
    Reply,
    prefix_of,
    reply_prefix,
    request,
    running_worker,
    ws_event,
    ws_message,
)

from wsgi_channels.layers.memory import MemoryChannelLayer
from wsgi_channels.protocol import DONE_KEY


class Browser:
    """Keeps cookies between requests sent as ``http.request`` messages."""

    def __init__(self, layer: MemoryChannelLayer) -> None:
        self.layer = layer
        self.cookies: dict[str, str] = {}

    def cookie_header(self) -> list[tuple[bytes, bytes]]:
        if not self.cookies:
            return []
        value = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return [(b"cookie", value.encode("latin-1"))]

    def request(self, method: str, path: str, *, form: dict[str, str] | None = None) -> Reply:
        headers = self.cookie_header()
        body = b""
        if form is not None:
            from urllib.parse import urlencode

            body = urlencode(form).encode()
            headers.append((b"content-type", b"application/x-www-form-urlencoded"))
            headers.append((b"content-length", str(len(body)).encode()))
        path, _, query = path.partition("?")
        reply = request(
            self.layer, method, path, headers=headers, body=body, query_string=query.encode()
        )
        for value in reply.headers_all(b"set-cookie"):
            parsed: SimpleCookie = SimpleCookie(value.decode("latin-1"))
            for name, morsel in parsed.items():
                self.cookies[name] = morsel.value
        return reply

    def websocket_connect(self, path: str) -> tuple[str, list[dict[str, Any]]]:
        reply_channel = self.layer.new_channel(reply_prefix())
        handshake = [
            (b"connection", b"Upgrade"),
            (b"upgrade", b"websocket"),
            (b"sec-websocket-version", b"13"),
            (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        ]
        message = ws_message(
            reply_channel, 0, path=path, headers=[*handshake, *self.cookie_header()]
        )
        return reply_channel, ws_event(self.layer, "connect", message)


@pytest.fixture
def memory() -> MemoryChannelLayer:
    return MemoryChannelLayer(receive_timeout=0.5)


def assert_group_send_reaches(layer: MemoryChannelLayer, group: str, reply_channel: str) -> None:
    assert layer.group_channels(group) == [reply_channel]
    layer.send_group(group, {"text": "news"})
    channel, message = layer.receive([prefix_of(reply_channel)], block=True)
    assert (channel, message) == (reply_channel, {"text": "news"})


# -- Flask -------------------------------------------------------------------------------------


def test_flask_session_and_websocket_group(memory: MemoryChannelLayer) -> None:
    from flask_live_app import app

    browser = Browser(memory)
    with running_worker(app, memory):
        _, replies = browser.websocket_connect("/live")
        assert replies == [{"close": True, DONE_KEY: 0}]  # not logged in: rejected
        assert browser.request("POST", "/login", form={"user": "ada"}).status == 200
        assert "session" in browser.cookies
        reply_channel, replies = browser.websocket_connect("/live")
        assert replies == [{"accept": True}, {"text": "hello ada", DONE_KEY: 0}]
        assert_group_send_reaches(memory, "readers", reply_channel)
        message = ws_message(reply_channel, 1, path="/live", headers=browser.cookie_header())
        assert ws_event(memory, "disconnect", {**message, "code": 1000}) == [{DONE_KEY: 1}]
        assert memory.group_channels("readers") == []


# -- Django ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def django_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    db = tmp_path_factory.mktemp("django") / "db.sqlite3"
    os.environ["WSGI_CHANNELS_TEST_DB"] = str(db)
    os.environ["DJANGO_SETTINGS_MODULE"] = "django_project.settings"
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    from django.contrib.auth.models import User

    User.objects.create_superuser("admin", "admin@example.com", "s3cret-pass")
    from django.core.wsgi import get_wsgi_application

    yield get_wsgi_application()
    from django.db import connections

    connections.close_all()


def test_django_admin_login_and_websocket_group(
    django_app: Any, memory: MemoryChannelLayer
) -> None:
    browser = Browser(memory)
    with running_worker(django_app, memory):
        reply = browser.request("GET", "/admin/")
        assert reply.status == 302
        assert reply.header(b"location") == b"/admin/login/?next=/admin/"

        reply = browser.request("GET", "/admin/login/")
        assert reply.status == 200
        match = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', reply.body)
        assert match and "csrftoken" in browser.cookies
        token = html.unescape(match.group(1).decode())

        # Without the token CSRF protection refuses the login.
        bare = browser.request("POST", "/admin/login/", form={"username": "admin"})
        assert bare.status == 403

        reply = browser.request(
            "POST",
            "/admin/login/?next=/admin/",
            form={
                "csrfmiddlewaretoken": token,
                "username": "admin",
                "password": "s3cret-pass",
                "next": "/admin/",
            },
        )
        assert reply.status == 302, reply.body[:500]
        assert reply.header(b"location") == b"/admin/"
        assert "sessionid" in browser.cookies

        reply = browser.request("GET", "/admin/")
        assert reply.status == 200
        assert b"Site administration" in reply.body

        reply_channel, replies = browser.websocket_connect("/live/")
        assert replies == [{"accept": True}, {"text": "hello admin", DONE_KEY: 0}]
        assert_group_send_reaches(memory, "staff", reply_channel)

        anonymous = Browser(memory)
        _, replies = anonymous.websocket_connect("/live/")
        assert replies == [{"close": True, DONE_KEY: 0}]


def test_django_project_files_exist() -> None:
    assert (Path(__file__).parent / "django_project" / "settings.py").is_file()
