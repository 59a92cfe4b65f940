"""The servers under test, as subprocesses on loopback: PostgreSQL databases, Redis, daphne, Celery.

Every child is started through a tiny launcher that asks Linux to SIGTERM it when the
orchestrator dies (PR_SET_PDEATHSIG), and is stopped by its own PID (then its descendants
by PID), so nothing this module starts outlives a run, even one that crashed or was killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bench import procstat

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# Exec the real command after arranging to be sent SIGTERM if our parent (the bench) dies.
LAUNCHER = (
    "import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 15); os.execvp(sys.argv[1], sys.argv[1:])"
)


class StackError(RuntimeError):
    """A server did not come up; the message names it and shows its log's tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Process:
    """One child process with its log file."""

    name: str
    popen: subprocess.Popen
    log: Path
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL this process and whatever it forked, all by PID."""
        self.finish_stop(self.begin_stop(), timeout)

    def begin_stop(self) -> list[int]:
        if not self.alive():
            return []
        descendants = procstat.children(self.pid)
        self.popen.send_signal(signal.SIGTERM)
        return descendants

    def finish_stop(self, descendants: list[int], timeout: float = 10) -> None:
        if self.alive():
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        for pid in descendants:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Processes:
    """Everything started for a run, stopped in reverse order however the run ends."""

    log_dir: Path
    items: list[Process] = field(default_factory=list)

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str], port: int | None = None
    ) -> Process:
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                [PYTHON, "-c", LAUNCHER, *argv],
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        process = Process(name=name, popen=popen, log=log, port=port)
        self.items.append(process)
        return process

    def stop(self, *processes: Process) -> None:
        """Stop these processes together (all signalled first, then each waited for)."""
        started = [(process, process.begin_stop()) for process in processes]
        for process, descendants in started:
            process.finish_stop(descendants)
            if process in self.items:
                self.items.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.items)):
            try:
                process.stop()
            except Exception as error:  # keep stopping the others
                print(f"bench: could not stop {process.name}: {error}", file=sys.stderr)
        self.items.clear()


def wait_for(predicate, *, timeout: float, what: str, process: Process | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise StackError(f"{what} exited with {process.popen.returncode}:\n{tail(process.log)}")
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.1)
    log = tail(process.log) if process is not None else ""
    raise StackError(f"{what} did not come up within {timeout:.0f} s\n{log}")


def window_opening(loadgen_log: Path, timeout: float = 600) -> tuple[float, float] | None:
    """The measurement window the load generator announced in its log (monotonic seconds),
    read as soon as it is there; None if it never came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if loadgen_log.exists():
            for line in loadgen_log.read_text(errors="replace").splitlines():
                if line.startswith("window "):
                    start, end = (float(x) for x in line.split()[1:3])
                    return start, end
        time.sleep(0.1)
    return None


# --- PostgreSQL ----------------------------------------------------------------------------------


class Postgres:
    """Creates and drops the bench's own databases on an existing server."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url

    def url(self, name: str) -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))

    def _execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def drop(self, name: str) -> None:
        self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def create(self, name: str, template: str | None = None) -> None:
        self.drop(name)
        suffix = f' TEMPLATE "{template}"' if template else ""
        self._execute(f'CREATE DATABASE "{name}"{suffix}')

    def analyze(self, name: str) -> None:
        """Bring the planner's statistics of database `name` up to date."""
        import psycopg

        with psycopg.connect(self.url(name), autocommit=True) as conn:
            conn.execute("ANALYZE")

    def backends(self, name: str) -> list[int]:
        """PIDs of the server processes serving connections to database `name`."""
        rows = self._execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,))
        return [row[0] for row in rows]


# --- The product and the reference ---------------------------------------------------------------


def product_env(
    *,
    database_url: str,
    redis_port: int,
    secret_key: str,
    layer: str | None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """Production settings on loopback: DEBUG off, Redis for the layer, cache and broker."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "CELERY_", "CHANNEL_", "WIDGET_"))
        and key not in {"DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY", "ALLOWED_HOSTS"}
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "handoff.settings",
            "DATABASE_URL": database_url,
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/1",
            "CHANNEL_PREFIX": "bench",
            # One key for the whole run: the agents' sessions are signed with it.
            "SECRET_KEY": secret_key,
            "DEBUG": "false",
            # Plain HTTP on loopback, as the integration tests run it.
            "HANDOFF_SECURE": "false",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            # Every simulated customer comes from 127.0.0.1: lift the per-address caps.
            "WIDGET_MAX_SOCKETS_PER_IP": "100000",
            "WIDGET_RATE_LIMIT": "600",
            "HANDOFF_AI_BACKEND": "knowledge_base",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT),
        }
    )
    if layer:
        env["CHANNEL_LAYER"] = layer
    env.update(extra or {})
    return env


def start_redis(processes: Processes, name: str = "redis") -> Process:
    port = free_port()
    process = processes.spawn(
        name,
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(processes.log_dir),
        ],
        dict(os.environ),
        port=port,
    )
    wait_for(lambda: _redis_ping(port), timeout=10, what="redis-server", process=process)
    return process


def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def start_daphne(processes: Processes, name: str, app: str, env: dict[str, str]) -> Process:
    port = free_port()
    # The Procfile's web command, on loopback.
    argv = [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
    argv += ["--websocket-max-message-size", "65536", app]
    return processes.spawn(name, argv, env, port=port)


def wait_daphne(process: Process, *, health: bool) -> None:
    if not health:
        wait_for(lambda: port_open(process.port), timeout=60, what=process.name, process=process)
        return
    import httpx

    def healthy() -> bool:
        return httpx.get(f"http://127.0.0.1:{process.port}/healthz", timeout=5).status_code == 200

    wait_for(healthy, timeout=60, what=process.name, process=process)


def start_worker(
    processes: Processes, env: dict[str, str], concurrency: int, pool: str | None = None
) -> Process:
    # The Procfile's worker command.
    argv = [PYTHON, "-m", "celery", "-A", "handoff", "worker", "--loglevel=INFO"]
    argv += [f"--concurrency={concurrency}"]
    if pool:
        argv += [f"--pool={pool}"]
    return processes.spawn("worker", argv, env)


def start_ops(step: str, env: dict[str, str], *args: str) -> subprocess.Popen:
    """Start one `bench.ops` step in its own process (see `finish_ops`)."""
    return subprocess.Popen(
        [PYTHON, "-c", LAUNCHER, PYTHON, "-m", "bench.ops", step, *args],
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_ops(popen: subprocess.Popen, step: str, timeout: float = 300) -> dict:
    """Wait for a `bench.ops` step and return its JSON answer."""
    try:
        out, err = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.communicate()
        raise StackError(f"bench.ops {step} ran over {timeout:.0f} s") from None
    if popen.returncode != 0:
        raise StackError(f"bench.ops {step} failed:\n{out[-2000:]}{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1])


def run_ops(step: str, env: dict[str, str], *args: str, timeout: float = 300) -> dict:
    """Run one `bench.ops` step in its own process and return its JSON answer."""
    return finish_ops(start_ops(step, env, *args), step, timeout)
