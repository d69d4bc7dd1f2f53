"""The liveblog example (examples/flask_app) through a real worker, with
wsgi_channels.testing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.flask_app import GROUP, create_app
from wsgi_channels import Group
from wsgi_channels.layers import set_default_layer
from wsgi_channels.layers.memory import MemoryChannelLayer
from wsgi_channels.testing import WorkerTestApp


@pytest.fixture
def client(tmp_path: Path) -> Iterator[WorkerTestApp]:
    with WorkerTestApp(create_app(str(tmp_path / "liveblog.sqlite3"))) as test_app:
        yield test_app


def test_empty_page(client: WorkerTestApp) -> None:
    page = client.get("/")
    assert page.status_int == 200
    assert "Nothing yet" in page.text
    assert 'data-socket="/ws/liveblog"' in page.text
    assert client.get("/posts.json").json == {"posts": []}
    assert client.get("/static/liveblog.js").status_int == 200


def test_publish_with_the_form_reaches_every_socket(client: WorkerTestApp) -> None:
    with client.websocket("/ws/liveblog") as first, client.websocket("/ws/liveblog") as second:
        page = client.get("/")
        form = page.forms["publish"]
        form["author"] = "Ada"
        form["body"] = "The keynote starts <now>."
        response = form.submit()
        assert response.status_int == 303
        page = response.follow()
        assert "The keynote starts &lt;now&gt;." in page.text

        for ws in (first, second):
            post = ws.receive_json()
            assert post["author"] == "Ada"
            assert post["body"] == "The keynote starts <now>."
            assert post["id"] == 1
    assert client.get("/posts.json").json["posts"] == [post]


def test_publish_as_json(client: WorkerTestApp) -> None:
    with client.websocket("/ws/liveblog") as ws:
        response = client.post(
            "/posts", {"body": "Second talk"}, headers={"Accept": "application/json"}
        )
        assert response.status_int == 201
        assert response.json["author"] == "Anonymous"
        assert ws.receive_json() == response.json


@pytest.mark.parametrize(
    ("body", "accept", "message"),
    [
        pytest.param("   ", "text/html", "Write something first.", id="empty-html"),
        pytest.param("", "application/json", "Write something first.", id="empty-json"),
        pytest.param("x" * 5001, "application/json", "at most 5000", id="too-long"),
    ],
)
def test_invalid_post_is_refused_and_pushes_nothing(
    client: WorkerTestApp, body: str, accept: str, message: str
) -> None:
    with client.websocket("/ws/liveblog") as ws:
        response = client.post("/posts", {"body": body}, headers={"Accept": accept}, status=400)
        assert message in response.text
        assert ws.receive_nothing(0.3)
    assert client.get("/posts.json").json == {"posts": []}


def test_socket_leaves_the_group_on_disconnect(client: WorkerTestApp) -> None:
    ws = client.websocket("/ws/liveblog").connect()
    assert Group(GROUP, layer=client.layer).channels() == [ws.reply_channel]
    ws.close()
    assert Group(GROUP, layer=client.layer).channels() == []


def test_posts_from_elsewhere_reach_the_socket(client: WorkerTestApp) -> None:
    """Anything that sends to the group (a cron job, another process) is seen."""
    with client.websocket("/ws/liveblog") as ws:
        post = {"id": 99, "author": "cron", "body": "tick", "created": "2024-01-01T00:00:00+00:00"}
        Group(GROUP).send({"text": json.dumps(post)})
        assert ws.receive_json() == post


def test_plain_get_of_the_socket_url(client: WorkerTestApp) -> None:
    response = client.get("/ws/liveblog", status=426)
    assert response.headers["Upgrade"] == "websocket"


def test_database_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEBLOG_DB", str(tmp_path / "from-env.sqlite3"))
    layer = MemoryChannelLayer()
    set_default_layer(layer)
    try:
        app = create_app()
        app.test_client().post("/posts", data={"body": "stored"})
    finally:
        set_default_layer(None)
    assert (tmp_path / "from-env.sqlite3").exists()
    assert (
        create_app(str(tmp_path / "from-env.sqlite3"))
        .test_client()
        .get("/posts.json")
        .json["posts"][0]["body"]
        == "stored"
    )
