"""Security properties, end to end with real processes: cross-site WebSocket hijacking,
unguessable reply channels that no client can name, header smuggling through ``_``,
response header injection, no pickle, and Redis with a password and over TLS without
the password ever showing."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import websockets
from conftest import RedisServer, free_port, needs_redis, wait_for_port
from servers import REPO, CliProcess, Stack, child_env, cli_command
from websockets.exceptions import InvalidStatus

from wsgi_channels import ChannelsError
from wsgi_channels.layers import layer_from_url

pytestmark = [needs_redis]

PASSWORD = "s3cret-Pa55word-never-shown"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def lonely(redis: RedisServer) -> Iterator[tuple[CliProcess, str]]:
    """An interface with no worker, on a database of its own, emptied first."""
    url = redis.url.replace("/0", "/7")
    layer = layer_from_url(url)
    layer.flush()
    layer.close()
    port = free_port()
    process = CliProcess(
        "interface",
        "--bind", f"127.0.0.1:{port}",
        "--http-timeout", "1",
        "--websocket-connect-timeout", "1",
        env={"WSGI_CHANNELS_LAYER": url},
    ).start()  # fmt: skip
    process.port = port  # type: ignore[attr-defined]
    wait_for_port(port)
    yield process, url
    process.stop()


def _redis_keys(redis: RedisServer, db: int) -> list[bytes]:
    import redis as redis_py

    with redis_py.Redis(host="127.0.0.1", port=redis.port, db=db) as client:
        return list(client.scan_iter(count=1000))


# -- cross-site WebSocket hijacking ------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        pytest.param("http://evil.example", id="other-site"),
        pytest.param("http://127.0.0.1.evil.example:{port}", id="host-as-prefix"),
        pytest.param("http://127.0.0.1:{other}", id="other-port"),
        pytest.param("http://127.0.0.1", id="default-port"),
        pytest.param("null", id="null-origin"),
    ],
)
def test_cross_site_websocket_is_refused_before_the_layer(
    lonely: tuple[CliProcess, str], redis: RedisServer, origin: str
) -> None:
    process, _ = lonely
    port = process.port  # type: ignore[attr-defined]
    origin = origin.format(port=port, other=port + 1)

    async def connect() -> None:
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/ws/liveblog",
            origin=origin,  # type: ignore[arg-type]
            open_timeout=5,
        ):
            pass

    with pytest.raises(InvalidStatus) as info:
        run(connect())
    assert info.value.response.status_code == 403
    assert _redis_keys(redis, 7) == []  # nothing at all reached the layer


def test_same_origin_websocket_reaches_the_layer(
    lonely: tuple[CliProcess, str], redis: RedisServer
) -> None:
    """The control for the test above: the same handshake from the site's own page
    does reach the layer (and, with no worker, is refused after the connect timeout)."""
    process, url = lonely
    port = process.port  # type: ignore[attr-defined]

    async def connect() -> None:
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/ws/liveblog",
            origin=f"http://127.0.0.1:{port}",  # type: ignore[arg-type]
            open_timeout=5,
        ):
            pass

    with pytest.raises(InvalidStatus):
        run(connect())
    layer = layer_from_url(url)
    try:
        assert layer.channel_statistics("websocket.connect")["messages_pending"] == 1
    finally:
        layer.flush()
        layer.close()


# -- reply channels: unguessable, and never named by a client ----------------------------------

CANARY = "canary.chan"


def test_reply_channels_are_random_and_no_request_field_names_a_channel(
    lonely: tuple[CliProcess, str], redis: RedisServer
) -> None:
    process, url = lonely
    port = process.port  # type: ignore[attr-defined]
    base = f"http://127.0.0.1:{port}"
    hostile = {
        "Reply-Channel": CANARY,
        "X-Reply-Channel": f"{CANARY}!x",
        "Channel": CANARY,
        "Group": CANARY,
        "Cookie": f"reply_channel={CANARY}; group={CANARY}",
    }
    query = f"?reply_channel={CANARY}&body_channel={CANARY}&group={CANARY}&channel={CANARY}"

    def one(i: int) -> None:
        if i % 10 == 0:  # a body over the inline limit: it needs a body_channel
            requests.post(
                f"{base}/{CANARY}{query}", data=b"x" * 300_000, headers=hostile, timeout=5
            )
        else:
            requests.get(f"{base}/{CANARY}/{i}{query}", headers=hostile, timeout=5)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(60)]
    for thread in threads:
        thread.start()

    async def websocket() -> None:
        with pytest.raises(InvalidStatus):  # no worker: refused after the connect timeout
            async with websockets.connect(
                f"ws://127.0.0.1:{port}/ws/{CANARY}{query}",
                additional_headers=hostile,
                open_timeout=5,
            ):
                pass

    run(websocket())
    for thread in threads:
        thread.join(10)

    layer = layer_from_url(url)
    messages: list[dict[str, Any]] = []
    try:
        for channel in ("http.request", "websocket.connect"):
            while True:
                _, message = layer.receive([channel])
                if message is None:
                    break
                messages.append(message)
    finally:
        layer.flush()
        layer.close()
    assert len(messages) == 61
    # Every channel the interface put in a message, and every key it wrote to Redis:
    # none comes from the request.
    named = [m["reply_channel"] for m in messages]
    named += [m["body_channel"] for m in messages if m.get("body_channel")]
    assert len(named) == 67
    assert not [n for n in named if CANARY in n]
    assert not [k for k in _redis_keys(redis, 7) if CANARY.encode() in k]
    # wsgi_channels.interface.<128 random bits>!<128 random bits>
    shape = re.compile(r"^wsgi_channels\.interface\.([0-9a-f]{32})!([A-Za-z0-9_-]{22})$")
    locals_ = []
    for name in (m["reply_channel"] for m in messages):
        match = shape.match(name)
        assert match, name
        locals_.append(match.group(2))
    assert len(set(locals_)) == len(locals_)
    # 22 characters of a 64-letter alphabet: 132 bits, above the 96 asked for; and the
    # letters are spread as random ones would be.
    assert 22 * 6 >= 96
    assert len(set("".join(locals_))) > 50
    body_channels = [m["body_channel"] for m in messages if m.get("body_channel")]
    assert all(re.match(r"^http\.request\.body\?[A-Za-z0-9_-]{22}$", b) for b in body_channels)


# -- headers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(redis: RedisServer) -> Iterator[Stack]:
    with Stack(
        redis.url.replace("/0", "/8"), "_security_apps:app", interface_args=("--http-timeout", "3")
    ) as running:
        yield running


def test_header_names_with_underscores_are_dropped(stack: Stack) -> None:
    response = requests.get(
        stack.url + "/headers",
        headers={"X-User": "alice", "X_User": "admin", "Content_Type": "evil"},
        timeout=5,
    )
    seen = response.json()
    assert seen["HTTP_X_USER"] == "alice"
    assert "HTTP_CONTENT_TYPE" not in seen and "CONTENT_TYPE" not in seen, seen


@pytest.mark.parametrize("path", ["/inject-value", "/inject-name", "/inject-nul", "/inject-status"])
def test_crlf_in_response_headers_is_a_500(stack: Stack, path: str) -> None:
    with socket.create_connection(("127.0.0.1", stack.interface.port), timeout=5) as conn:
        conn.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 500 "), answer
    assert b"pwned" not in answer and b"never" not in answer
    assert stack.worker.alive()


# -- no pickle ------------------------------------------------------------------------------------


def test_no_pickle_anywhere_in_the_package() -> None:
    unsafe = re.compile(
        r"^\s*(import|from)\s+(c?pickle|_pickle|shelve|marshal|dill|cloudpickle)\b|"
        r"\b(pickle|marshal)\.loads?\(",
        re.MULTILINE,
    )
    sources = sorted((REPO / "wsgi_channels").rglob("*.py"))
    assert len(sources) > 10
    found = [
        f"{path.relative_to(REPO)}: {m.group(0).strip()}"
        for path in sources
        for m in unsafe.finditer(path.read_text())
    ]
    assert found == []


# -- Redis with a password, and over TLS ----------------------------------------------------------


def _secret_free(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text, text[-2000:]


def _serve_and_check(url: str, tmp_path: Path) -> tuple[CliProcess, CliProcess, int]:
    """Interface and worker on *url*, given in the environment (not argv, which every
    user of the machine can read); one HTTP request and one WebSocket echo through them."""
    port = free_port()
    env = {"WSGI_CHANNELS_LAYER": url}
    interface = CliProcess(
        "interface", "--bind", f"127.0.0.1:{port}", "--http-timeout", "3", env=env
    ).start()
    worker = CliProcess("worker", "apps:echo", "--threads", "2", env=env).start()
    worker.wait_for_output("worker serving", timeout=15)
    wait_for_port(port, timeout=15)
    assert requests.get(f"http://127.0.0.1:{port}/through", timeout=5).status_code == 200

    async def echo() -> object:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/echo") as ws:
            await ws.send("secure")
            return await asyncio.wait_for(ws.recv(), 5)

    assert run(echo()) == "secure"
    for process in (interface, worker):
        assert process.process is not None
        cmdline = Path(f"/proc/{process.process.pid}/cmdline").read_bytes().decode()
        _secret_free(cmdline)
    return interface, worker, port


def test_redis_with_a_password_works_and_never_shows_it(tmp_path: Path) -> None:
    server = RedisServer("--requirepass", PASSWORD)
    server.start()
    url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    processes: list[CliProcess] = []
    try:
        interface, worker, port = _serve_and_check(url, tmp_path)
        processes += [interface, worker]
        layer = layer_from_url(url)
        errors: list[str] = [repr(layer), str(layer.hosts)]  # type: ignore[attr-defined]

        # An outage: the interface answers 503, the layer raises; no password anywhere.
        server.stop()
        statuses = {
            requests.get(f"http://127.0.0.1:{port}/x", timeout=5).status_code for _ in range(3)
        }
        assert statuses == {503}
        for call in (
            lambda: layer.send("x", {"a": 1}),
            lambda: layer.receive(["x"], block=True),
            lambda: layer.group_add("g", "x"),
            lambda: layer.send_group("g", {}),
        ):
            with pytest.raises(ChannelsError) as info:
                call()
            errors += [str(info.value), repr(info.value), str(info.value.__cause__)]
        time.sleep(1.5)  # let the worker and interface log their retries
        server.start()

        # A wrong password: refused, with the URL masked.
        wrong = f"redis://:wrong-{PASSWORD}@127.0.0.1:{server.port}/0"
        bad = layer_from_url(wrong)
        with pytest.raises(ChannelsError) as info:
            bad.send("x", {"a": 1})
        errors += [str(info.value), repr(info.value), str(info.value.__cause__), repr(bad)]
        command = subprocess.run(
            cli_command("stats"),
            env=child_env({"WSGI_CHANNELS_LAYER": wrong}),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert command.returncode == 2
        assert command.stderr.count("\n") == 1, command.stderr
        errors += [command.stdout, command.stderr]
        layer.close()
        bad.close()
        logs = [p.output for p in processes]
        assert "unavailable" in "".join(logs)  # the outage was logged...
        _secret_free(*errors, *logs)  # ...and nothing shows the password
        assert "***" in "".join(errors)
    finally:
        for process in processes:
            process.stop()
        server.cleanup()


def _make_certificates(directory: Path) -> dict[str, Path]:
    """A test CA and a server certificate for 127.0.0.1 signed by it."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def write_key(key: Any, name: str) -> Path:
        path = directory / name
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wsgi-channels test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {
        "ca": directory / "ca.pem",
        "cert": directory / "server.pem",
        "key": write_key(key, "server.key"),
    }
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return paths


class TLSRedisServer(RedisServer):
    """redis-server speaking only TLS (``--port 0``) on its port, with a password."""

    def __init__(self, certs: dict[str, Path]) -> None:
        super().__init__()
        self.extra_args = [
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(certs["cert"]),
            "--tls-key-file", str(certs["key"]),
            "--tls-ca-cert-file", str(certs["ca"]),
            "--tls-auth-clients", "no",
            "--requirepass", PASSWORD,
        ]  # fmt: skip


def test_redis_over_tls_with_a_password_works_end_to_end(tmp_path: Path) -> None:
    certs = _make_certificates(tmp_path)
    server = TLSRedisServer(certs)
    server.start()
    url = f"rediss://:{PASSWORD}@127.0.0.1:{server.port}/0?ssl_ca_certs={certs['ca']}"
    processes: list[CliProcess] = []
    try:
        layer = layer_from_url(url)
        layer.send("tls.check", {"text": "over TLS"})
        assert layer.receive(["tls.check"]) == ("tls.check", {"text": "over TLS"})
        interface, worker, _ = _serve_and_check(url, tmp_path)
        processes += [interface, worker]
        layer.close()

        # The certificate is checked: a client that does not trust the test CA, or
        # that speaks plain TCP to the TLS port, gets nowhere, and says so without
        # the password.
        messages = []
        for other in (
            f"rediss://:{PASSWORD}@127.0.0.1:{server.port}/0",
            f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0?socket_timeout=2",
        ):
            untrusting = layer_from_url(other)
            with pytest.raises(ChannelsError) as info:
                untrusting.send("tls.check", {"text": "x"})
            messages += [str(info.value), repr(info.value)]
            untrusting.close()
        assert "certificate verify failed" in messages[0]
        _secret_free(*messages, *(p.output for p in processes))
    finally:
        for process in processes:
            process.stop()
        server.cleanup()
