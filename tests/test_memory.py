"""The servers' garbage collector: start-up frozen, the young generation collected less often."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from handoff.settings import gc_thresholds

ROOT = Path(__file__).resolve().parent.parent

REPORT = (
    "import gc, json\n"
    "print(json.dumps({'thresholds': gc.get_threshold(), 'frozen': gc.get_freeze_count(),"
    " 'walked': len(gc.get_objects())}))\n"
)


def collector_after(start: str, **env: str) -> dict:
    """The collector of a fresh process with production settings, once `start` ran."""
    environment = {
        **{k: v for k, v in os.environ.items() if k not in {"DEBUG", "GC_THRESHOLDS"}},
        "DJANGO_SETTINGS_MODULE": "handoff.settings",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/handoff",
        "SECRET_KEY": "a-secret-key-for-this-test-only",
        "DEBUG": "false",
        **env,
    }
    result = subprocess.run(
        [sys.executable, "-c", start + REPORT],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_web_process_freezes_what_start_up_made_and_collects_young_objects_less_often():
    collector = collector_after("import handoff.asgi\n")

    assert collector["thresholds"] == [10000, 10, 10]
    # A full collection walks what was made since start-up, not the modules and set-up.
    assert collector["frozen"] > 50_000
    assert collector["walked"] < collector["frozen"] / 10


def test_the_worker_freezes_what_start_up_made_before_its_pool_forks():
    collector = collector_after(
        "import django\n"
        "django.setup()\n"
        "from celery import signals\n"
        "from handoff.celery import app\n"
        "app.loader.import_default_modules()\n"
        "signals.worker_init.send(sender=None)\n"
    )

    assert collector["thresholds"] == [10000, 10, 10]
    assert collector["frozen"] > 50_000


def test_gc_thresholds_off_keeps_pythons_collector():
    collector = collector_after("import handoff.asgi\n", GC_THRESHOLDS="off")

    assert collector["thresholds"] == [700, 10, 10]
    assert collector["frozen"] == 0


def test_gc_thresholds_of_ones_own(monkeypatch):
    monkeypatch.setenv("GC_THRESHOLDS", "5000, 20, 5")
    assert gc_thresholds("GC_THRESHOLDS", "10000,10,10") == (5000, 20, 5)
    monkeypatch.delenv("GC_THRESHOLDS")
    assert gc_thresholds("GC_THRESHOLDS", "10000,10,10") == (10000, 10, 10)


@pytest.mark.parametrize("raw", ["10000", "a,b,c", "0,10,10", "10000,-1,10", "1,2,3,4"])
def test_gc_thresholds_that_make_no_sense_are_refused_by_name(monkeypatch, raw):
    monkeypatch.setenv("GC_THRESHOLDS", raw)
    with pytest.raises(ImproperlyConfigured, match="GC_THRESHOLDS must be three counts"):
        gc_thresholds("GC_THRESHOLDS", "10000,10,10")
