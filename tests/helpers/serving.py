"""`serving(app)` runs a server app under uvicorn for the tests that talk HTTP to it."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import httpx
import pytest


@contextlib.contextmanager
def serving(app, shutdown_s: float = 10):
    """Runs `app` under uvicorn on a free port of 127.0.0.1 in a thread; yields its URL once /health is
    200, then stops it and checks that it stopped within `shutdown_s`."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    else:
        pytest.fail("the server did not become healthy in 60 s")
    yield url
    server.should_exit = True
    thread.join(shutdown_s)
    assert not thread.is_alive(), "the server did not shut down"
