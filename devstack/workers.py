"""Celery worker and Flower processes for tests, the demo and benchmarks.

Each is one child process with its output in a log file, stopped by its PID.
"""

import os
import subprocess
import sys
from pathlib import Path

from tasks.config import Config, to_env

from devstack.process import stop_child


REPO = Path(__file__).resolve().parents[1]


def env_for(config: Config) -> dict[str, str]:
    """This process's environment with every virt-revert setting taken from `config` alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRT_REVERT_")}
    env.update(to_env(config), VIRT_REVERT_CONFIG="/nonexistent")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


class _Child:
    """A child process started with argv and env, output appended to log_path."""

    def __init__(self, argv: list[str], env: dict[str, str] | None, log_path):
        self.argv = argv
        self.env = env
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        return self

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM (Celery's warm shutdown: finish running tasks), SIGKILL after timeout."""
        if self.proc is not None:
            stop_child(self.proc, timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class WorkerProcess(_Child):
    """`python -m tasks.cli worker` serving one host's queue."""

    def __init__(self, host: str, uri: str, env: dict[str, str] | None = None,
                 concurrency: int = 2, log_path=None):
        super().__init__([sys.executable, "-m", "tasks.cli", "worker", "--host", host,
                          "--uri", uri, "--concurrency", str(concurrency)],
                         env, log_path or f"worker-{host}.log")


class FlowerProcess(_Child):
    """Flower on 127.0.0.1:port with basic auth (its /api needs auth turned on)."""

    def __init__(self, broker_url: str, port: int, basic_auth: str,
                 env: dict[str, str] | None = None, log_path="flower.log"):
        super().__init__([sys.executable, "-m", "celery", "-A", "tasks.app",
                          f"--broker={broker_url}", "flower", "--address=127.0.0.1",
                          f"--port={port}", f"--basic-auth={basic_auth}"],
                         env, log_path)
