"""A real `vclvirt api` process for the tests of VCL's provisioning module and its routes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import ROOT

TOKEN = "vcl-test-token-" + "y" * 24


@dataclass
class ApiServer:
    url: str
    token: str
    log_path: Path

    def client(self, *, authorised: bool = True, timeout: float = 90) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if authorised else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def api_server(tmp_path: Path, token: str = TOKEN) -> Iterator[ApiServer]:
    """`vclvirt api` on a free loopback port with a bearer token, stopped afterwards."""
    port = free_port()
    log_path = tmp_path / f"api-{port}.log"
    env = {**os.environ, "VCLVIRT_API_TOKEN": token}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "vclvirt", "api", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    server = ApiServer(f"http://127.0.0.1:{port}", token, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"vclvirt api did not start:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=15)
