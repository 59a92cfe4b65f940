"""Real product processes for the integration suite: the Procfile's commands, on loopback.

Every process runs in its own process group, so a kill reaches its children (Celery's pool)
and nothing started here outlives the test run: `ProcessGroup.close` stops them all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import _free_port, _port_open

ROOT = Path(__file__).resolve().parent.parent.parent
VENV_BIN = str(Path(sys.executable).parent)


def procfile_command(kind: str) -> str:
    """The command of one Procfile entry, exactly as written there."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() == kind:
            return command.strip()
    raise LookupError(f"Procfile has no {kind!r} entry")


def wait_until(predicate, *, timeout: float, what: str, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(interval)


class Process:
    """One command run through `sh -c` as a Procfile runner does, logging to a file."""

    def __init__(self, name: str, command: str, env: dict[str, str], log_dir: Path) -> None:
        self.name, self.command, self.env = name, command, env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Process:
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- start: {self.command}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                ["/bin/sh", "-c", f"exec {self.command}"],
                cwd=ROOT,
                env={**self.env, "PATH": f"{VENV_BIN}:{self.env.get('PATH', '')}"},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: kills reach the children
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_running(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the whole process group (the process and its children)."""
        # Only while the leader is not reaped: until then its pid, and so the group id,
        # cannot belong to anybody else's processes.
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the group, SIGKILL whatever is left after `timeout`, then reap the leader."""
        if self.proc is None:
            return
        self.kill(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._exited():
            time.sleep(0.05)
        self.kill(signal.SIGKILL)  # stragglers: a pool process, or a leader that hung
        self.proc.wait(timeout=10)
        self.proc = None

    def _exited(self) -> bool:
        """Whether the leader has exited, without reaping it (so the group id stays ours)."""
        if self.proc.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class RedisServer(Process):
    """A private `redis-server` without persistence, so a test may kill it at will."""

    def __init__(self, name: str, log_dir: Path, port: int | None = None) -> None:
        self.port = port or _free_port()
        work = log_dir / name
        work.mkdir(exist_ok=True)
        command = (
            f"redis-server --port {self.port} --bind 127.0.0.1 --save '' --appendonly no"
            f" --daemonize no --dir {work}"
        )
        super().__init__(name, command, dict(os.environ), log_dir)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def ping(self) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self) -> RedisServer:
        super().start()
        wait_until(self.ping_or_fail, timeout=10, what=f"{self.name} on port {self.port}")
        return self

    def ping_or_fail(self) -> bool:
        self.check_running()
        return self.ping()

    def crash(self) -> None:
        """Kill the server outright (no shutdown, no save) and wait until the port is free."""
        self.kill(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self.proc = None
        wait_until(lambda: not _port_open(self.port), timeout=10, what=f"{self.name} to stop")


class Daphne(Process):
    """The Procfile's `web` process on a loopback port."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.port = _free_port()
        command = procfile_command("web")
        assert "-b 0.0.0.0" in command, command
        # Loopback only: nothing outside this machine may reach a test server.
        command = command.replace("-b 0.0.0.0", "-b 127.0.0.1")
        super().__init__(name, command, {**env, "PORT": str(self.port)}, log_dir)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        self.check_running()
        return _port_open(self.port)


class ProcessGroup:
    """Every process a fixture started, stopped in reverse order even when a test failed."""

    def __init__(self) -> None:
        self.processes: list[Process] = []

    def add(self, process: Process) -> Process:
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.stop()
