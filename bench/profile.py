"""Where the time goes: py-spy on the servers during the measurement window (`--profile`).

py-spy samples every thread, idle ones included (`--idle`), so a thread's profile shows where
its wall time goes: the web process's one sync thread (every widget's database work) waiting
on PostgreSQL, on new connections or on hops to the event loop shows as such. Optional: the
benchmark runs without py-spy, and says so.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.stack import window_opening

RATE = 100  # samples per second per thread


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


class Profiler:
    """Records each target process with py-spy for the load generator's window."""

    def __init__(self, log_dir: Path, label: str, targets: dict[str, int]) -> None:
        self.log_dir, self.label, self.targets = log_dir, label, targets
        self.runs: dict[str, tuple[subprocess.Popen, Path]] = {}
        self.thread: threading.Thread | None = None
        self.error: str | None = None if py_spy() else "py-spy is not installed"

    def start_when_window_opens(self, loadgen_log: Path) -> None:
        if self.error:
            return
        self.thread = threading.Thread(target=self._wait_and_start, args=(loadgen_log,))
        self.thread.daemon = True
        self.thread.start()

    def _wait_and_start(self, loadgen_log: Path) -> None:
        window = window_opening(loadgen_log)
        if window is None:
            self.error = "the load generator never opened its window"
            return
        time.sleep(max(window[0] - time.monotonic(), 0))
        seconds = max(int(window[1] - time.monotonic()), 1)
        for name, pid in self.targets.items():
            out = self.log_dir / f"profile-{self.label}-{name}.txt"
            argv = [py_spy(), "record", "--pid", str(pid), "--duration", str(seconds)]
            argv += ["--rate", str(RATE), "--idle", "--threads", "--nonblocking"]
            argv += ["--format", "raw", "--output", str(out)]
            if name == "worker":
                argv.append("--subprocesses")
            popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.runs[name] = (popen, out)

    def finish(self) -> dict:
        if self.thread is not None:
            self.thread.join(timeout=5)
        summary: dict = {}
        for name, (popen, out) in self.runs.items():
            try:
                popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
            summary[name] = summarise(out) if out.exists() else {"error": "no profile written"}
            summary[name]["file"] = str(out)
        if self.error:
            summary["error"] = self.error
        return summary


PROJECT = ("conversations/", "dashboard/", "escalation/", "handoff/")


def category(names: list[str], files: list[str]) -> str:
    """What a sample's thread was doing, from its innermost frames outwards."""
    joined = " ".join(names)
    if "get_new_connection" in joined or "Connection.connect" in joined:
        return "opening a PostgreSQL connection"
    if any(f.startswith("psycopg/") for f in files[-6:]) or "Connection.wait" in joined:
        return "waiting on PostgreSQL"
    if "AsyncToSync.__call__" in joined:
        return "waiting on a hop to the event loop (async_to_sync)"
    if names and names[-1] in {"select", "EpollSelector.select", "poll", "_poll", "_epoll.poll"}:
        return "idle (event loop waiting)"
    if names and names[-1] in {"wait", "Condition.wait", "_worker", "get", "Queue.get", "sleep"}:
        return "idle (waiting for work)"
    if names and names[-1] == "Connection._recv" and files[-1].startswith("billiard/"):
        return "idle (waiting for work)"  # a pool process waiting for its next task
    if any(f.startswith("redis/") for f in files[-8:]):
        return "Redis client"
    return "running Python"


def owner(names: list[str], files: list[str]) -> str:
    """The innermost frame of the project's own code (or of a Celery task), if any."""
    for name, where in zip(reversed(names), reversed(files), strict=True):
        if where.startswith(PROJECT) and not where.startswith("handoff/asgi"):
            return f"{name} ({where})"
    return "-"


def summarise(path: Path, top: int = 10) -> dict:
    """Per thread: its samples, split by (project code, what it was doing), largest first."""
    threads: collections.Counter[str] = collections.Counter()
    buckets: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        # --subprocesses prefixes one "process PID:cmd" frame per generation of processes.
        generations = 0
        while frames and frames[0].startswith("process "):
            frames.pop(0)
            generations += 1
        thread = _thread_name(frames.pop(0)) if frames else "?"
        if generations > 1:
            thread = f"{thread} of the pool processes"
        names = [f.split(" (")[0] for f in frames]
        files = [f.rsplit("(", 1)[-1].split(":")[0].split("site-packages/")[-1] for f in frames]
        threads[thread] += int(count)
        buckets[thread][f"{category(names, files)} | {owner(names, files)}"] += int(count)
    result: dict = {"threads": {}}
    for thread, total in threads.most_common(6):
        rows = [(key, round(100 * n / total, 1)) for key, n in buckets[thread].most_common(top)]
        result["threads"][thread] = {"samples": total, "top": rows}
    return result


def _thread_name(first: str) -> str:
    # py-spy --threads: "thread (1234): MainThread". Short-lived executors share one bucket:
    # one per HTTP request in daphne, one per `async_to_sync` call outside an event loop.
    name = first.split(": ", 1)[-1] if first.startswith("thread") else first
    if name.startswith("ThreadPoolExecutor-") and not name.endswith("-0_0"):
        return "short-lived ThreadPoolExecutor threads"
    if name == "ThreadPoolExecutor-0_0":
        return "ThreadPoolExecutor-0_0 (the sync thread)"
    return name
