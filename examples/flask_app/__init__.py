"""Liveblog: a Flask app whose page updates live as posts are published.

The example of the Django Channels talk, as an ordinary Flask app:

* ``GET /`` lists the posts (rendered on the server; ``static/liveblog.js`` then keeps
  the list live over a WebSocket and publishes without reloading);
* ``POST /posts`` publishes a post: it is stored in SQLite and broadcast with
  ``Group("liveblog").send(...)``. :class:`~wsgi_channels.ChannelsMiddleware` holds the
  broadcast back until the response has succeeded, so a failed request pushes nothing;
* ``GET /posts.json`` lists the posts, for clients catching up after a reconnect;
* ``/ws/liveblog`` is the WebSocket: each connection joins the ``liveblog`` group on
  connect and leaves it on disconnect.

Run it from the repository's root, in one of three ways::

    wsgi-channels run examples.flask_app:app                   # development, one process

    gunicorn examples.flask_app:app                             # HTTP, as today
    wsgi-channels interface --bind 127.0.0.1:8001               # WebSockets (proxy /ws/ here)
    wsgi-channels worker examples.flask_app:app

    wsgi-channels interface --bind 127.0.0.1:8000               # everything through the
    gunicorn -k wsgi_channels.gunicorn.ChannelWorker examples.flask_app:app  # interface

With gunicorn serving the pages, ``LIVEBLOG_SOCKET_URL`` (for example
``ws://127.0.0.1:8001/ws/liveblog``) sends the page's WebSocket to the interface server,
which must then allow the page's origin (``--allowed-origin http://127.0.0.1:8000``).

The posts live in the SQLite file named by ``LIVEBLOG_DB`` (default
``liveblog.sqlite3`` in the current directory); the channel layer is the one named by
``WSGI_CHANNELS_LAYER`` (default ``sqlite:///.wsgi_channels.sqlite3``). All processes
must use the same two.
"""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import datetime, timezone
from typing import Any

from flask import Flask, Response, g, jsonify, redirect, render_template, request, url_for

from wsgi_channels import ChannelsMiddleware, Group

__all__ = ["GROUP", "app", "create_app"]

GROUP = "liveblog"
MAX_AUTHOR = 80
MAX_BODY = 5000
PAGE_SIZE = 100

SCHEMA = """
CREATE TABLE IF NOT EXISTS posts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    author TEXT NOT NULL,
    body TEXT NOT NULL,
    created TEXT NOT NULL
)
"""


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=10)
    db.row_factory = sqlite3.Row
    return db


def _as_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "author": row["author"],
        "body": row["body"],
        "created": row["created"],
    }


def create_app(db_path: str | None = None) -> Flask:
    """The liveblog app, storing its posts in *db_path* (default: ``LIVEBLOG_DB``, else
    ``liveblog.sqlite3``), its WSGI callable wrapped in ChannelsMiddleware."""
    app = Flask(__name__)
    app.config["LIVEBLOG_DB"] = db_path or os.environ.get("LIVEBLOG_DB", "liveblog.sqlite3")
    # Where the page opens its WebSocket: this server's /ws/liveblog by default, or an
    # interface server on another address when gunicorn serves the pages (way 2).
    app.config["LIVEBLOG_SOCKET_URL"] = os.environ.get("LIVEBLOG_SOCKET_URL", "")
    ready = []  # the schema exists: made on first use, so importing touches no file

    def get_db() -> sqlite3.Connection:
        if "db" not in g:
            g.db = _connect(app.config["LIVEBLOG_DB"])
            if not ready:
                g.db.execute("PRAGMA journal_mode=WAL")  # readers go on while one writes
                g.db.execute(SCHEMA)
                ready.append(True)
        db: sqlite3.Connection = g.db
        return db

    @app.teardown_appcontext
    def close_db(exc: BaseException | None) -> None:
        db = g.pop("db", None)
        if db is not None:
            db.close()

    def recent_posts() -> list[dict[str, Any]]:
        rows = (
            get_db()
            .execute("SELECT * FROM posts ORDER BY id DESC LIMIT ?", (PAGE_SIZE,))
            .fetchall()
        )
        return [_as_dict(row) for row in rows]

    def wants_json() -> bool:
        best = request.accept_mimetypes.best_match(["application/json", "text/html"])
        return best == "application/json"

    @app.get("/")
    def index() -> str:
        return render_template("index.html", posts=recent_posts(), error=None, form={})

    @app.get("/posts.json")
    def posts_json() -> Response:
        response = jsonify(posts=recent_posts())
        response.cache_control.no_store = True
        return response

    @app.post("/posts")
    def publish() -> Any:
        author = request.form.get("author", "").strip()[:MAX_AUTHOR] or "Anonymous"
        body = request.form.get("body", "").strip()
        error = None
        if not body:
            error = "Write something first."
        elif len(body) > MAX_BODY:
            error = f"A post is at most {MAX_BODY} characters."
        if error is not None:
            if wants_json():
                return jsonify(error=error), 400
            form = {"author": author, "body": body}
            return render_template("index.html", posts=recent_posts(), error=error, form=form), 400

        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        db = get_db()
        with db:
            cursor = db.execute(
                "INSERT INTO posts (author, body, created) VALUES (?, ?, ?)",
                (author, body, created),
            )
        post = {"id": cursor.lastrowid, "author": author, "body": body, "created": created}
        # Delivered by ChannelsMiddleware once this response has succeeded.
        Group(GROUP).send({"text": json.dumps(post)})
        if wants_json():
            return jsonify(post), 201
        return redirect(url_for("index"), code=303)

    @app.route("/ws/liveblog")
    def liveblog_socket() -> Any:
        event = request.environ.get("wsgi_channels.websocket")
        reply_channel = request.environ.get("wsgi_channels.reply_channel")
        if event is None or reply_channel is None:
            return Response("This is a WebSocket endpoint.\n", 426, {"Upgrade": "websocket"})
        if event == "connect":
            Group(GROUP).add(reply_channel)  # 2xx: accept the connection
        elif event == "disconnect":
            Group(GROUP).discard(reply_channel)
        # Frames from the browser ("receive") need no answer.
        return Response(status=204)

    app.wsgi_app = ChannelsMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app


app = create_app()
