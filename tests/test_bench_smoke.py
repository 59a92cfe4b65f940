"""The benchmark runs end to end at a tiny load, through the same code as `python -m bench run`.

It starts its own databases, Redis, daphne, a Celery worker and the load generator, so it
needs PostgreSQL (the test settings' server) and `redis-server` on the PATH; a few seconds
of load, and every process it started is gone afterwards however it ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
BUDGET_SECONDS = 90  # normally ~25 s; generous for a machine busy with other suites

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def admin_url() -> str:
    """The test database server, addressed through its `postgres` maintenance database."""
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/postgres"


def drop_databases(url: str, prefix: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for suffix in ("run", "tpl"):
            conn.execute(f'DROP DATABASE IF EXISTS "{prefix}_{suffix}" WITH (FORCE)')


@pytest.fixture
def smoke_run(tmp_path):
    """Run `python -m bench run --smoke`; stop it (and so its servers) whatever happens."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on the PATH")
    prefix = f"handoff_bench_smoke_{os.getpid()}"
    out = tmp_path / "report.json"
    argv = [sys.executable, "-m", "bench", "run", "--smoke", "--json", str(out)]
    argv += ["--log-dir", str(tmp_path / "logs"), "--pg-url", admin_url(), "--db-prefix", prefix]
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        try:
            output, _ = proc.communicate(timeout=BUDGET_SECONDS)
        except subprocess.TimeoutExpired:
            # SIGTERM unwinds the run (it stops its servers); its children also get SIGTERM
            # from the kernel if it dies (PR_SET_PDEATHSIG), so a kill cannot leak them.
            proc.send_signal(signal.SIGTERM)
            try:
                output, _ = proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
            pytest.fail(f"the smoke run took over {BUDGET_SECONDS} s:\n{output[-4000:]}")
        assert proc.returncode == 0, output[-6000:]
        yield json.loads(out.read_text()), output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        drop_databases(admin_url(), prefix)


def test_a_smoke_run_reports_every_measurement_and_loses_nothing(smoke_run):
    report, output = smoke_run
    [entry] = report["loads"]
    product, bare = entry["product"], entry["bare"]
    for side in (product, bare):
        assert side["messages_in_window"] > 0
        assert side["fanout"]["lost"] == 0, side["fanout"]
        assert side["fanout"]["unacknowledged"] == 0, side["fanout"]
        assert side["fanout"]["p99"] is not None
        assert side["updates_in_window"] > 0
        assert side["server_cpu_s"] > 0
        assert "loadgen" in side["cpu_s"]
        assert side["errors"] == {} and side["closed"] == 0
    assert product["ai_reply"]["samples"] > 0 and product["ai_reply"]["missing"] == 0
    # Every message was echoed to its widget, before its card reached the consoles.
    assert product["echo"]["samples"] == product["messages_in_window"]
    assert product["echo"]["p50"] <= product["fanout"]["p50"]
    assert product["attention"]["feedbacks"] == 1 and product["attention"]["lost"] == 0
    # A desk's history in the database (its queries planned for tables of that size) ...
    assert report["history"]["conversations"] > 0
    assert report["history"]["messages"] == 10 * report["history"]["conversations"]
    # ... and the statistics refreshed as the window opened, once every conversation existed.
    assert product["analyze"]["at_s"] >= 0 and product["analyze"]["seconds"] >= 0
    [race] = product["races"]
    assert race["statuses"]["200"] == 1 and race["missing"] == 0
    assert race["statuses"]["409"] == sum(race["statuses"].values()) - 1
    consistency = product["consistency"]
    assert "error" not in consistency, consistency
    assert consistency["cards_equal"] == consistency["counters_equal"] == consistency["consoles"]
    assert entry["ratio_vs_bare"] > 0
    assert entry["idle_sockets"]["sockets"] > 0 and entry["idle_sockets"]["failed"] == 0
    sizes = report["snapshot"]["sizes"]
    opened = [size["open_conversations"] for size in sizes]
    assert len(opened) == 2 and opened[0] < opened[1]
    assert len({size["queries"] for size in sizes}) == 1  # however many conversations
    assert {t["target"] for t in report["targets"]} >= {
        "L2 fan-out p99",
        "L2 AI reply p99",
        "L3 (2 web) fan-out",
    }
    assert "Targets (issue 6)" in output
