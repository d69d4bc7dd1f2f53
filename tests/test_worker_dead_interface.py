"""A worker whose interface process was SIGKILLed mid-download frees its threads within
seconds, so the restarted interface is answered at once."""

from __future__ import annotations

import signal
import socket
import time

import pytest
from _faults import http_get
from servers import InterfaceProcess, WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.fault]


def test_first_request_after_interface_crash_answers_within_3s(redis_url: str) -> None:
    workers = WorkerProcess("apps:echo", redis_url, threads=4).start()
    interface = InterfaceProcess(redis_url).start()
    port = interface.port
    clients = []
    try:
        # Four 50 MB downloads that are never read: every worker thread is busy
        # pushing their bodies, which back up in the interface and the layer.
        for _ in range(4):
            client = socket.create_connection(("127.0.0.1", port))
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.sendall(b"GET /download HTTP/1.1\r\nHost: x\r\n\r\n")
            clients.append(client)
        time.sleep(1.5)
        interface.signal(signal.SIGKILL)
        assert interface.process is not None
        interface.process.wait(10)
        interface.stop()  # collects the dead process's log
        interface = InterfaceProcess(redis_url, port=port).start()
        result = http_get(port, "/hello", timeout=10)
        assert result.status == 200, result
        assert result.duration < 3.0, result.duration
    finally:
        for client in clients:
            client.close()
        interface.stop()
        workers.stop()
