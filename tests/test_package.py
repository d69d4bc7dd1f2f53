"""``python -m build`` makes a wheel and an sdist with the right contents and one version."""

from __future__ import annotations

import email.parser
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from servers import REPO

import wsgi_channels

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return wheel, sdist, result.stdout + result.stderr


def test_wheel_holds_the_package_with_py_typed_and_no_tests(dist: tuple[Path, Path, str]) -> None:
    wheel, _, _ = dist
    names = zipfile.ZipFile(wheel).namelist()
    assert "wsgi_channels/py.typed" in names
    assert "wsgi_channels/django/management/commands/runserver.py" in names
    assert "wsgi_channels/flask_command.py" in names
    assert not [n for n in names if n.startswith(("tests/", "examples/", "benchmarks/"))]
    assert {n.split("/")[0] for n in names} == {
        "wsgi_channels",
        wheel.name.split("-py3")[0] + ".dist-info",
    }


def test_sdist_holds_the_example_files_docs_and_no_tests(dist: tuple[Path, Path, str]) -> None:
    _, sdist, _ = dist
    with tarfile.open(sdist) as archive:
        names = [n.split("/", 1)[1] for n in archive.getnames() if "/" in n]
    for expected in [
        "wsgi_channels/py.typed",
        "examples/flask_app/__init__.py",
        "examples/flask_app/templates/index.html",
        "examples/flask_app/static/liveblog.js",
        "examples/flask_app/static/liveblog.css",
        "docs/django.md",
        "CHANGELOG.md",
        "README.md",
    ]:
        assert expected in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", ".ci/"))]
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".sqlite3"))]


def test_one_version_and_the_entry_points(dist: tuple[Path, Path, str]) -> None:
    wheel, sdist, _ = dist
    archive = zipfile.ZipFile(wheel)
    info = wheel.name.split("-py3")[0] + ".dist-info"
    metadata = email.parser.Parser().parsestr(archive.read(f"{info}/METADATA").decode())
    assert metadata["Version"] == wsgi_channels.__version__
    assert metadata["License-Expression"] == "BSD-3-Clause"
    assert wheel.name.startswith(f"wsgi_channels-{wsgi_channels.__version__}-")
    assert sdist.name == f"wsgi_channels-{wsgi_channels.__version__}.tar.gz"
    entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert "wsgi-channels = wsgi_channels.cli:main" in entry_points
    assert "[flask.commands]\nchannels = wsgi_channels.flask_command:channels" in entry_points


def test_the_build_gives_no_license_deprecation_warning(dist: tuple[Path, Path, str]) -> None:
    _, _, output = dist
    assert "project.license" not in output
    assert "SetuptoolsDeprecationWarning" not in output
