"""``"wsgi_channels.django"`` in INSTALLED_APPS: ``manage.py runserver`` serves HTTP,
static files and WebSockets, on a project made by ``django-admin startproject``."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import websockets
from conftest import free_port, wait_for_port
from servers import GroupProcess, child_env, metrics_text

pytestmark = pytest.mark.slow

VIEW = """
from django.http import HttpResponse, HttpResponseForbidden


def live(request):
    event = request.META.get("wsgi_channels.websocket")
    if event is None:
        return HttpResponse("open this as a WebSocket")
    if not request.user.is_authenticated:
        return HttpResponseForbidden()
    if event == "connect":
        return HttpResponse(GREETING + request.user.username, content_type="text/plain")
    return HttpResponse(b"", content_type="text/plain")


GREETING = "hello "


def gc_frozen(request):
    import gc

    return HttpResponse(str(gc.get_freeze_count()), content_type="text/plain")
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh project, its app listed first, a ``live/`` view, migrated, with a
    superuser ``admin``/``secret-pass-1``."""
    root = tmp_path_factory.mktemp("django")
    env = child_env()
    run = {"cwd": root, "env": env, "check": True, "capture_output": True}
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", "."], **run)  # type: ignore[call-overload]
    settings = root / "mysite" / "settings.py"
    text = settings.read_text()
    text = text.replace("INSTALLED_APPS = [\n", 'INSTALLED_APPS = [\n    "wsgi_channels.django",\n')
    text += f'\nWSGI_CHANNELS_LAYER = "sqlite:///{root / "project-layer.sqlite3"}"\n'
    settings.write_text(text)
    (root / "mysite" / "views.py").write_text(VIEW)
    urls = root / "mysite" / "urls.py"
    urls.write_text(
        urls.read_text()
        .replace(
            "from django.urls import path", "from django.urls import path\n\nfrom . import views"
        )
        .replace(
            "path('admin/', admin.site.urls),",
            "path('admin/', admin.site.urls),\n    path('live/', views.live),"
            "\n    path('gc-frozen/', views.gc_frozen),",
        )
        .replace(
            'path("admin/", admin.site.urls),',
            'path("admin/", admin.site.urls),\n    path("live/", views.live),'
            '\n    path("gc-frozen/", views.gc_frozen),',
        )
    )
    assert "views.live" in urls.read_text()
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], **run)  # type: ignore[call-overload]
    subprocess.run(  # type: ignore[call-overload]
        [
            sys.executable,
            "manage.py",
            "createsuperuser",
            "--noinput",
            "--username",
            "admin",
            "--email",
            "admin@example.com",
        ],
        **{**run, "env": {**env, "DJANGO_SUPERUSER_PASSWORD": "secret-pass-1"}},
    )
    return root


class Manage(GroupProcess):
    """``manage.py ARGS`` in the background, in its own process group (the
    autoreloader runs the server in a child process)."""

    def __init__(self, project: Path, *args: str) -> None:
        super().__init__([sys.executable, "manage.py", *args], cwd=project, env=child_env())


@pytest.fixture
def runserver(project: Path) -> Iterator[tuple[Manage, int]]:
    port = free_port()
    server = Manage(project, "runserver", f"127.0.0.1:{port}")
    try:
        wait_for_port(port, timeout=30)
        yield server, port
    except BaseException:
        print(server.output)
        raise
    finally:
        server.stop()


def login(port: int) -> requests.Session:
    session = requests.Session()
    url = f"http://127.0.0.1:{port}/admin/login/?next=/admin/"
    page = session.get(url, timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token is not None, page.text
    answer = session.post(
        url,
        data={
            "csrfmiddlewaretoken": token.group(1),
            "username": "admin",
            "password": "secret-pass-1",
            "next": "/admin/",
        },
        timeout=10,
    )
    assert answer.status_code == 200
    assert answer.url.endswith("/admin/")
    assert "Site administration" in answer.text
    return session


def greeting(port: int, session: requests.Session | None) -> str:
    async def connect() -> str:
        headers = {}
        if session is not None:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in session.cookies.items())
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/live/", additional_headers=headers, open_timeout=10
        ) as ws:
            return str(await asyncio.wait_for(ws.recv(), 10))

    return asyncio.run(connect())


def test_runserver_serves_the_admin_with_its_css(runserver: tuple[Manage, int]) -> None:
    server, port = runserver
    page = requests.get(f"http://127.0.0.1:{port}/admin/login/", timeout=10)
    assert page.status_code == 200
    css = re.search(r'href="(/static/admin/css/[^"]+\.css)"', page.text)
    assert css is not None, page.text
    sheet = requests.get(f"http://127.0.0.1:{port}{css.group(1)}", timeout=10)
    assert sheet.status_code == 200
    assert sheet.headers["Content-Type"].startswith("text/css")
    assert len(sheet.content) > 100
    assert "Starting development server at http://127.0.0.1:" in server.output
    assert f"Channel layer: sqlite:///{Path.cwd().anchor}" in server.output
    assert "project-layer.sqlite3" in server.output


def test_runserver_websocket_sees_the_logged_in_user(runserver: tuple[Manage, int]) -> None:
    _, port = runserver
    with pytest.raises(websockets.InvalidStatus) as refused:
        greeting(port, None)
    assert refused.value.response.status_code == 403
    assert greeting(port, login(port)) == "hello admin"


def test_runserver_reloads_after_an_edit(project: Path, runserver: tuple[Manage, int]) -> None:
    server, port = runserver
    session = login(port)
    assert greeting(port, session) == "hello admin"
    views = project / "mysite" / "views.py"
    original = views.read_text()
    try:
        views.write_text(original.replace('GREETING = "hello "', 'GREETING = "welcome back "'))
        deadline = time.monotonic() + 30
        seen = ""
        while time.monotonic() < deadline:
            try:
                seen = greeting(port, session)
            except (OSError, websockets.WebSocketException):
                seen = ""
            if seen == "welcome back admin":
                break
            time.sleep(0.3)
        assert seen == "welcome back admin", server.output
    finally:
        views.write_text(original)


def test_runserver_noreload_nothreading(project: Path) -> None:
    port = free_port()
    server = Manage(project, "runserver", "--noreload", "--nothreading", str(port))
    try:
        wait_for_port(port, timeout=30)
        assert greeting(port, login(port)) == "hello admin"
        assert "with 1 threads" in server.output
    finally:
        print(server.output)
        server.stop()


def test_runserver_serves_metrics(project: Path) -> None:
    port, metrics_port = free_port(), free_port()
    server = Manage(
        project, "runserver", "--noreload", str(port), "--metrics", f"127.0.0.1:{metrics_port}"
    )
    try:
        wait_for_port(port, timeout=30)
        assert greeting(port, login(port)) == "hello admin"
        text = metrics_text(metrics_port, until='status="200"')
        # The login page, the login's redirect, and the WebSocket: both halves count.
        counted = ['requests_total{status="200"}', 'requests_total{status="302"}', "frames_total{"]
        assert [line for line in counted if line not in text] == [], text
    finally:
        print(server.output)
        server.stop()


def test_runworker_and_runinterface_use_the_layer_setting(project: Path) -> None:
    port = free_port()
    worker = Manage(project, "runworker", "--threads", "2")
    interface = Manage(project, "runinterface", f"127.0.0.1:{port}")
    try:
        wait_for_port(port, timeout=30)
        assert greeting(port, login(port)) == "hello admin"
        assert (project / "project-layer.sqlite3").exists()
        # The worker froze the loaded project's heap out of garbage collections.
        frozen = requests.get(f"http://127.0.0.1:{port}/gc-frozen/", timeout=10)
        assert int(frozen.text) > 5000
    finally:
        print(worker.output, interface.output)
        worker.stop()
        interface.stop()


def test_a_runserver_listed_before_ours_is_a_check_warning(project: Path) -> None:
    (project / "mysite" / "settings_late.py").write_text(
        "from .settings import *  # noqa: F403\n\n"
        "INSTALLED_APPS = [a for a in INSTALLED_APPS if a != 'wsgi_channels.django']"
        " + ['wsgi_channels.django']  # noqa: F405\n"
    )

    def check(settings: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", "check", "--settings", settings],
            cwd=project,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result.stdout + result.stderr

    late = check("mysite.settings_late")
    assert "wsgi_channels.W001" in late
    assert "django.contrib.staticfiles is listed before wsgi_channels.django" in late
    assert "wsgi_channels.W001" not in check("mysite.settings")
