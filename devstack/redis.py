"""A throwaway Redis broker: one foreground redis-server child per test run."""

import socket
import subprocess
import time

from devstack.process import free_port, stop_child


class RedisServer:
    """redis-server on 127.0.0.1; noeviction so no queued task is dropped.

    Without `data_dir`, nothing is persisted; with it, an append-only file
    fsynced on every write, as production runs it, so a restart loses nothing.
    """

    def __init__(self, port: int | None = None, data_dir=None):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.data_dir = data_dir
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 10) -> "RedisServer":
        persistence = (["--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "always"]
                       if self.data_dir else ["--appendonly", "no"])
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", *persistence, "--maxmemory-policy", "noeviction"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
            time.sleep(0.05)
        return self

    def ping(self) -> bool:
        """True when the server answers PING (raw RESP, so no client library is needed)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10) -> None:
        if self.proc is not None:
            stop_child(self.proc, timeout)

    def restart(self) -> None:
        """Stop and start again on the same port (and data, when persistent)."""
        self.stop()
        self.start()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
