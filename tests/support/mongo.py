"""A real MongoDB-protocol server for tests: nx-27017 on a free port, or TEST_MONGODB_URI."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pymongo


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


class MongoServer:
    """An nx-27017 process that a test can stop and start again on the same port and data."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        """The connection string of this server."""
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self) -> None:
        """Start the server and wait until it answers a ping."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        exe = shutil.which("nx-27017") or str(Path(sys.executable).with_name("nx-27017"))
        log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [exe, "--data-dir", str(self.data_dir / "db"), "--host", "127.0.0.1",
             "-p", str(self.port), "--log-file", str(self.data_dir / "nx.log"),
             "--pid-file", str(self.data_dir / "nx.pid")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        wait_for_port("127.0.0.1", self.port)
        with pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=10000) as client:
            client.admin.command("ping")

    def stop(self) -> None:
        """Kill the server (SIGKILL: a crash, not a clean shutdown)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def freeze(self) -> None:
        """SIGSTOP the server: it keeps accepting connections but never answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, 19)

    def thaw(self) -> None:
        """SIGCONT a frozen server."""
        assert self.proc is not None
        os.kill(self.proc.pid, 18)
