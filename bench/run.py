"""The orchestrator: builds the database, starts the servers, runs the load generator, reports.

One load level is: the product (daphne web process(es) + a Celery worker + its own Redis,
on a fresh copy of the seeded database) under the load generator, then the bare Channels
app under the same load on the same channel layer. Once per run it also measures RSS per
idle widget socket and the console snapshot of many open conversations.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import procstat, profile, report, stack

MiB = 1024 * 1024


@dataclass(frozen=True)
class Load:
    name: str
    consoles: int
    customers: int
    rate: float  # messages per second per customer
    web: int = 1  # daphne processes


LOADS = {
    "L1": Load("L1", 10, 100, 0.2),
    "L2": Load("L2", 50, 500, 0.2),
    "L3": Load("L3", 50, 1000, 0.2, web=2),
}


@dataclass
class Options:
    loads: list[Load]
    duration: float = 60
    warmup: float | None = None
    layer: str | None = None
    worker_concurrency: int = 4
    worker_pool: str | None = None
    idle_sockets: int = 1000
    idle_warm: int = 50
    idle_settle: float = 3
    # Closed conversations (ten messages each) in the database before any load.
    history: int = 20000
    snapshot_open: tuple[int, ...] = (200, 2000)
    snapshot_repeat: int = 7
    race_agents: int = 50
    races: int = 3
    feedbacks: int | None = None
    bare: bool = True
    quiet: float = 2.0
    pg_url: str = "postgres://postgres@127.0.0.1:5432/postgres"
    db_prefix: str = "handoff_bench"
    json_path: Path | None = None
    log_dir: Path | None = None
    server_env: dict[str, str] = field(default_factory=dict)
    profile: bool = False
    # Wait (up to `quiet_wait` seconds) for the 1-minute load average to drop to this first.
    quiet_below: float | None = None
    quiet_wait: float = 1800


class Run:
    """One benchmark run; `execute()` always stops what it started and drops its databases."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.log_dir = options.log_dir or Path(tempfile.mkdtemp(prefix="handoff-bench-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.processes = stack.Processes(self.log_dir)
        self.postgres = stack.Postgres(options.pg_url)
        self.template = f"{options.db_prefix}_tpl"
        self.database = f"{options.db_prefix}_run"
        self.created: list[str] = []
        self.agents: list[dict] = []
        self.services: list[dict] = []
        self.history: dict = {}
        self.secret_key = "bench-" + os.urandom(24).hex()
        self.clock = time.monotonic()

    # --- Steps -------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(f"bench [{time.monotonic() - self.clock:6.1f} s] {text}", file=sys.stderr, flush=True)

    def execute(self) -> dict:
        started = time.time()
        result: dict[str, Any] = {
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started)),
            "environment": self.environment(),
            "options": {
                **{k: v for k, v in asdict(self.options).items() if k not in {"loads"}},
                "loads": [asdict(load) for load in self.options.loads],
                "json_path": str(self.options.json_path) if self.options.json_path else None,
                "log_dir": str(self.log_dir),
            },
            "loads": [],
        }
        try:
            self.build_template()
            result["history"] = self.history
            for n, load in enumerate(self.options.loads):
                idle = self.options.idle_sockets if n == 0 else 0
                result["loads"].append(self.run_load(load, idle_sockets=idle))
            if self.options.snapshot_open:
                result["snapshot"] = self.snapshot()
                self.say("snapshot measured")
        finally:
            self.processes.stop_all()
            for name in self.created:
                try:
                    self.postgres.drop(name)
                except Exception as error:
                    print(f"bench: could not drop {name}: {error}", file=sys.stderr)
        result["seconds"] = round(time.time() - started, 1)
        result["targets"] = report.targets(result)
        return result

    def environment(self) -> dict:
        import channels
        import channels_redis
        import daphne
        import django

        return {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "django": django.get_version(),
            "channels": channels.__version__,
            "channels_redis": channels_redis.__version__,
            "daphne": daphne.__version__,
            "kernel": platform.release(),
            "loadavg_at_start": procstat.loadavg(),
            "python_speed_ms": procstat.python_speed_ms(),
        }

    def env(self, database: str, redis_port: int) -> dict[str, str]:
        return stack.product_env(
            database_url=self.postgres.url(database),
            redis_port=redis_port,
            secret_key=self.secret_key,
            layer=self.options.layer,
            extra=self.options.server_env,
        )

    def build_template(self) -> None:
        """Migrate and seed once; every load then starts from a copy of it."""
        self.postgres.create(self.template)
        self.created.append(self.template)
        # Redis is not needed to migrate or seed; a port nobody listens on keeps it honest.
        env = self.env(self.template, stack.free_port())
        agents = max(self.options.race_agents, max(load.consoles for load in self.options.loads))
        # `manage.py migrate` and `seed_demo`, in one process with the agents' setup.
        prepared = stack.run_ops(
            "setup", env, "--agents", str(agents), "--history", str(self.options.history)
        )
        self.agents, self.services = prepared["agents"], prepared["services"]
        self.history = history = prepared["history"]
        self.say(
            f"database migrated and seeded, with {history['conversations']} closed conversations"
            f" and {history['messages']} messages of history ({history['seconds']} s)"
        )

    def fresh_database(self) -> str:
        self.postgres.create(self.database, template=self.template)
        if self.database not in self.created:
            self.created.append(self.database)
        return self.database

    def run_load(self, load: Load, *, idle_sockets: int) -> dict:
        self.say(
            f"{load.name}: {load.consoles} consoles, {load.customers} customers, "
            f"{load.rate}/s each, {load.web} web process(es)"
        )
        self.wait_for_quiet()
        entry: dict[str, Any] = {"load": asdict(load), "loadavg_before": procstat.loadavg()}
        database = self.fresh_database()
        redis = stack.start_redis(self.processes, f"redis-{load.name}")
        env = self.env(database, redis.port)
        webs = [
            stack.start_daphne(
                self.processes, f"web{n}-{load.name}", "handoff.asgi:application", env
            )
            for n in range(load.web)
        ]
        worker = stack.start_worker(
            self.processes, env, self.options.worker_concurrency, self.options.worker_pool
        )
        ping = stack.start_ops("worker-ping", env, "--name", "celery")
        try:
            for web in webs:
                stack.wait_daphne(web, health=True)
        except BaseException:
            ping.kill()
            ping.wait()
            raise
        if not stack.finish_ops(ping, "worker-ping")["ok"]:
            raise stack.StackError(f"the Celery worker never answered:\n{stack.tail(worker.log)}")
        groups = {web.name.split("-")[0]: [web.pid] for web in webs}
        groups.update({"worker": [worker.pid], "redis": [redis.pid]})
        self.say("product up")
        try:
            if idle_sockets:
                entry["idle_sockets"] = self.idle(webs[0], env, idle_sockets)
                self.say(f"idle sockets: {entry['idle_sockets']['kib_per_socket']} KiB each")
            entry["product"] = self.drive("product", load, webs, groups, database)
            self.say(f"product: fan-out p99 {entry['product']['fanout']['p99']} ms")
        finally:
            self.processes.stop(*webs, worker, redis)
        if self.options.bare:
            entry["bare"] = self.bare(load)
            self.say(f"bare: fan-out p99 {entry['bare']['fanout']['p99']} ms")
            product, bare = entry["product"], entry["bare"]
            if product.get("updates_per_cpu_s") and bare.get("updates_per_cpu_s"):
                entry["ratio_vs_bare"] = round(
                    product["updates_per_cpu_s"] / bare["updates_per_cpu_s"], 2
                )
            if product.get("updates_per_cpu_s_all") and bare.get("updates_per_cpu_s_all"):
                entry["ratio_vs_bare_all"] = round(
                    product["updates_per_cpu_s_all"] / bare["updates_per_cpu_s_all"], 2
                )
        entry["loadavg_after"] = procstat.loadavg()
        return entry

    def bare(self, load: Load) -> dict:
        redis = stack.start_redis(self.processes, f"redis-bare-{load.name}")
        env = self.env(self.database, redis.port)
        webs = [
            stack.start_daphne(
                self.processes, f"bare{n}-{load.name}", "bench.bare:application", env
            )
            for n in range(load.web)
        ]
        try:
            for web in webs:
                stack.wait_daphne(web, health=False)
            groups = {web.name.split("-")[0]: [web.pid] for web in webs}
            groups["redis"] = [redis.pid]
            return self.drive("bare", load, webs, groups, None)
        finally:
            self.processes.stop(*webs, redis)

    def loadgen_config(self, mode: str, load: Load, webs: list[stack.Process]) -> dict:
        options = self.options
        feedbacks = options.feedbacks
        if feedbacks is None:
            feedbacks = max(1, min(50, load.customers // 10))
        return {
            "phase": "fanout",
            "mode": mode,
            "web": [f"http://127.0.0.1:{web.port}" for web in webs],
            "consoles": self.agents[: load.consoles],
            "race_agents": self.agents[: options.race_agents],
            "customers": load.customers,
            "rate": load.rate,
            "duration": options.duration,
            "warmup": options.warmup,
            "services": self.services,
            "feedbacks": feedbacks,
            "races": options.races,
            "quiet": options.quiet,
            "seed": 6,
        }

    def drive(
        self,
        mode: str,
        load: Load,
        webs: list[stack.Process],
        groups: dict[str, list[int]],
        database: str | None,
    ) -> dict:
        """Run the load generator against running servers while sampling their CPU and RSS."""
        config = self.loadgen_config(mode, load, webs)
        sampler = procstat.Sampler(groups=groups)
        sampler.start()
        stop = threading.Event()
        label = f"{mode}-{load.name}"
        analyzed: dict = {}
        if database is not None:
            threading.Thread(
                target=self._follow_postgres, args=(sampler, database, stop), daemon=True
            ).start()
            threading.Thread(
                target=self._analyze_when_window_opens,
                args=(database, self.log_dir / f"loadgen-{label}.log", analyzed),
                daemon=True,
            ).start()
        targets = {name: pids[0] for name, pids in groups.items() if name != "redis"}
        profiler = None
        if self.options.profile:
            profiler = profile.Profiler(self.log_dir, label, targets)
            profiler.start_when_window_opens(self.log_dir / f"loadgen-{label}.log")
        try:
            raw, generator_pid = self.loadgen(config, label, sampler)
        except stack.StackError:
            self.check_alive()  # a server that died is the better explanation
            raise
        finally:
            stop.set()
            sampler.stop()
            if profiler is not None:
                raw_profile = profiler.finish()
        self.check_alive()
        if profiler is not None:
            raw["profile"] = raw_profile
        if database is not None:
            raw["analyze"] = analyzed or {"error": "not run"}
        start, end = raw["marks"]["window_start"], raw["marks"]["window_end"]
        cpu = {name: round(value, 2) for name, value in sampler.cpu_between(start, end).items()}
        seconds = end - start
        servers = sum(v for k, v in cpu.items() if k not in {"loadgen", "postgres"})
        everything = servers + cpu.get("postgres", 0.0)
        raw["cpu_s"] = cpu
        raw["cpu_percent"] = {name: round(100 * v / seconds, 1) for name, v in cpu.items()}
        # PostgreSQL's RSS is mostly shared buffers counted once per backend: not shown.
        raw["rss_mb"] = {
            name: round(v / MiB, 1)
            for name, v in sampler.rss_between(start, end).items()
            if name != "postgres"
        }
        raw["server_cpu_s"] = round(servers, 2)
        raw["updates_per_s"] = round(raw["updates_in_window"] / seconds, 1)
        if servers > 0:
            raw["updates_per_cpu_s"] = round(raw["updates_in_window"] / servers, 1)
        if everything > 0:
            raw["updates_per_cpu_s_all"] = round(raw["updates_in_window"] / everything, 1)
        if raw["messages_in_window"]:
            # Meaningful while the product keeps up: a backlog moves CPU out of the window.
            raw["cpu_ms_per_message"] = round(1000 * everything / raw["messages_in_window"], 1)
        raw["loadgen_pid"] = generator_pid
        return raw

    def wait_for_quiet(self) -> None:
        """Other work on the machine disturbs latencies: optionally wait for a quiet spell."""
        if self.options.quiet_below is None:
            return
        deadline = time.monotonic() + self.options.quiet_wait
        while procstat.loadavg()[0] > self.options.quiet_below and time.monotonic() < deadline:
            time.sleep(5)
        self.say(f"load average {procstat.loadavg()}")

    def check_alive(self) -> None:
        """Fail loudly, naming it, if a server died under the load (or was killed)."""
        for process in self.processes.items:
            if process.name.startswith("loadgen") or process.alive():
                continue
            code = process.popen.returncode
            how = f"signal {-code}" if code < 0 else f"exit status {code}"
            raise stack.StackError(
                f"{process.name} (pid {process.pid}) ended during the run ({how}):\n"
                f"{stack.tail(process.log)}"
            )

    def _follow_postgres(self, sampler: procstat.Sampler, database: str, stop) -> None:
        """Keep the sampler's list of PostgreSQL backends serving the bench database current."""
        while not stop.is_set():
            with contextlib.suppress(Exception):
                sampler.extra_pids = {"postgres": self.postgres.backends(database)}
            stop.wait(2)

    def _analyze_when_window_opens(self, database: str, loadgen_log: Path, result: dict) -> None:
        """Refresh the planner's statistics once the warm-up has started every conversation,
        as autovacuum does on a running system (it looks once a minute, the window is
        shorter). The warm-up grows the tables from the seed's few rows to hundreds of
        conversations and thousands of messages in seconds, and a connection plans its
        prepared statements once, with the statistics of that moment: plans made for
        nearly empty tables (reading the whole messages table for each batch's mood
        windows, say) would last the whole window, as on no running system."""
        window = stack.window_opening(loadgen_log)
        if window is None:
            return
        time.sleep(max(window[0] - time.monotonic(), 0))
        began = time.monotonic()
        try:
            self.postgres.analyze(database)
        except Exception as error:
            result["error"] = str(error)
            return
        result.update(at_s=round(began - window[0], 2), seconds=round(time.monotonic() - began, 2))

    def loadgen(self, config: dict, label: str, sampler: procstat.Sampler) -> tuple[dict, int]:
        config_path = self.log_dir / f"loadgen-{label}.json"
        out_path = self.log_dir / f"loadgen-{label}-out.json"
        config_path.write_text(json.dumps(config))
        process = self.processes.spawn(
            f"loadgen-{label}",
            [stack.PYTHON, "-m", "bench.loadgen", str(config_path), str(out_path)],
            {**os.environ, "PYTHONPATH": str(stack.ROOT)},
        )
        sampler.groups = {**sampler.groups, "loadgen": [process.pid]}
        budget = config.get("warmup") or 0
        budget += 1 / config["rate"] + config.get("duration", 0) + 240
        try:
            process.popen.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            raise stack.StackError(f"the load generator ran over {budget:.0f} s") from None
        finally:
            self.processes.stop(process)
        if process.popen.returncode != 0 or not out_path.exists():
            raise stack.StackError(f"the load generator failed:\n{stack.tail(process.log, 40)}")
        return json.loads(out_path.read_text()), process.pid

    def idle(self, web: stack.Process, env: dict[str, str], sockets: int) -> dict:
        """RSS of one web process before and while `sockets` idle widgets are connected."""
        config = {
            "phase": "idle",
            "web": [f"http://127.0.0.1:{web.port}"],
            "services": self.services,
            "idle_sockets": sockets,
            "idle_warm": self.options.idle_warm,
            "idle_settle": self.options.idle_settle,
            "idle_hold": self.options.idle_settle,
            "rate": 1,
        }
        sampler = procstat.Sampler(groups={"web": [web.pid]}, interval=0.25)
        sampler.start()
        try:
            raw, _ = self.loadgen(config, "idle", sampler)
        finally:
            sampler.stop()
        marks = raw["marks"]
        before = sampler.rss_at(marks["before"])["web"]
        held = [
            s.rss["web"]
            for s in sampler.samples
            if marks["hold_start"] <= s.at <= marks["hold_end"]
        ]
        during = sorted(held)[len(held) // 2] if held else sampler.rss_at(marks["hold_end"])["web"]
        opened = max(raw["sockets"], 1)
        return {
            "sockets": raw["sockets"],
            "failed": raw["failed"],
            "rss_before_mb": round(before / MiB, 1),
            "rss_during_mb": round(during / MiB, 1),
            "kib_per_socket": round((during - before) / opened / 1024, 1),
        }

    def snapshot(self) -> dict:
        """Time the console snapshot in-process at growing numbers of open conversations."""
        database = self.fresh_database()
        env = self.env(database, stack.free_port())
        args = ["--repeat", str(self.options.snapshot_repeat)]
        for count in self.options.snapshot_open:
            args += ["--open", str(count)]
        result = stack.run_ops("snapshot", env, *args)
        result["loadavg"] = procstat.loadavg()
        return result


def execute(options: Options) -> dict:
    """Run the benchmark, print the table, write the JSON; return the report."""
    result = Run(options).execute()
    text = report.table(result)
    print(text)
    if options.json_path is not None:
        options.json_path.parent.mkdir(parents=True, exist_ok=True)
        options.json_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"JSON report: {options.json_path}")
    return result
