"""CPU and memory of processes, read from /proc (Linux only)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def python_speed_ms(rounds: int = 5) -> float:
    """Milliseconds this machine takes for a fixed pure-Python loop (best of `rounds`).

    Machines (and the same virtual machine on different days) differ in speed: the figure
    lets results from different runs be compared, as CPU per message scales with it.
    """
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        total = 0
        for number in range(2_000_000):
            total += number
        best = min(best, time.perf_counter() - started)
    return round(1000 * best, 1)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            raw = handle.read()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after it.
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of one live process, in seconds."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # utime and stime are fields 14 and 15 of stat(5); the slice starts at field 3.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int | None:
    """Resident set size of one live process, in bytes."""
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


def children(pid: int) -> list[int]:
    """Every live descendant of `pid` (Celery's prefork children, for one)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def loadavg() -> list[float]:
    with open("/proc/loadavg") as handle:
        return [float(value) for value in handle.read().split()[:3]]


@dataclass
class Sample:
    at: float
    cpu: dict[str, float]
    rss: dict[str, int]


@dataclass
class Sampler:
    """Sample CPU and RSS of named process trees every `interval` seconds in a thread.

    `groups` maps a name to root PIDs; a group's CPU is the sum over the roots and all their
    descendants seen so far. CPU of descendants that already exited is kept (their last
    sample), so a recycled Celery child does not make the total go backwards.
    """

    groups: dict[str, list[int]]
    interval: float = 0.5
    samples: list[Sample] = field(default_factory=list)
    extra_pids: dict[str, list[int]] = field(default_factory=dict)
    _last_cpu: dict[tuple[str, int], float] = field(default_factory=dict)
    _trees: dict[str, list[int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sample()

    def _run(self) -> None:
        ticks = 0
        while not self._stop.wait(self.interval):
            ticks += 1
            self.sample(with_children=ticks % 4 == 0)

    def sample(self, with_children: bool = True) -> Sample:
        cpu: dict[str, float] = {}
        rss: dict[str, int] = {}
        for name, roots in {**self.groups, **self.extra_pids}.items():
            pids = list(roots)
            # Walking /proc for descendants is the expensive part: do it every few samples.
            if with_children or name not in self._trees:
                for root in roots:
                    pids += children(root)
                self._trees[name] = pids
            else:
                pids = self._trees[name]
            total_rss = 0
            for pid in pids:
                used = cpu_seconds(pid)
                if used is not None:
                    self._last_cpu[(name, pid)] = used
                    total_rss += rss_bytes(pid) or 0
            cpu[name] = sum(v for (group, _), v in self._last_cpu.items() if group == name)
            rss[name] = total_rss
        sample = Sample(at=time.monotonic(), cpu=cpu, rss=rss)
        self.samples.append(sample)
        return sample

    def cpu_between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds each group used between two monotonic times (interpolated)."""
        return {
            name: max(self._cpu_at(name, end) - self._cpu_at(name, start), 0.0)
            for name in self.samples[-1].cpu
        }

    def _cpu_at(self, name: str, at: float) -> float:
        before = [s for s in self.samples if s.at <= at and name in s.cpu]
        after = [s for s in self.samples if s.at >= at and name in s.cpu]
        if not before:
            return after[0].cpu[name] if after else 0.0
        if not after:
            return before[-1].cpu[name]
        low, high = before[-1], after[0]
        if high.at == low.at:
            return low.cpu[name]
        share = (at - low.at) / (high.at - low.at)
        return low.cpu[name] + share * (high.cpu[name] - low.cpu[name])

    def rss_between(self, start: float, end: float) -> dict[str, int]:
        """Peak RSS of each group between two monotonic times."""
        inside = [s for s in self.samples if start <= s.at <= end] or self.samples[-1:]
        return {name: max(s.rss.get(name, 0) for s in inside) for name in inside[0].rss}

    def rss_at(self, at: float) -> dict[str, int]:
        """RSS of each group at the last sample taken at or before `at`."""
        before = [s for s in self.samples if s.at <= at] or self.samples[:1]
        return dict(before[-1].rss)
