"""Benchmark steps that need Django, run as `python -m bench.ops STEP` against the bench database.

The orchestrator itself never imports Django: each step runs in a short-lived process with
the same environment as the servers and prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

STEPS = ("setup", "snapshot", "worker-ping")


def _setup() -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "handoff.settings")
    django.setup()


def setup(agents: int, history: int) -> dict:
    """Migrate, seed the demo, add the desk's history, then create the agents and list what
    customers say."""
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", interactive=False, verbosity=0)
    with open(os.devnull, "w") as quiet:
        call_command("seed_demo", stdout=quiet)
    began = time.perf_counter()
    messages = add_history(history)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return {
        **prepare(agents),
        "history": {
            "conversations": history,
            "messages": messages,
            "seconds": round(time.perf_counter() - began, 1),
        },
    }


HISTORY_MESSAGES = 10  # per closed conversation: five questions and their answers
HISTORY_CHUNK = 1000  # conversations per statement


def add_history(conversations: int) -> int:
    """Closed conversations with their messages, spread over the last 60 days, as a desk
    that has been running for a while has: the product's queries are planned for tables
    of that size, as in production, not for the few rows of a fresh seed."""
    from datetime import timedelta

    from django.utils import timezone

    from conversations.models import Conversation, Message, Role, Service, Status, Visitor
    from handoff.db import insert_rows

    services = list(Service.objects.order_by("slug"))
    if not services or not conversations:
        return 0
    rng = random.Random(6)
    now = timezone.now()
    stored = 0
    for first in range(0, conversations, HISTORY_CHUNK):
        count = min(HISTORY_CHUNK, conversations - first)
        visitors = [Visitor(service=services[n % len(services)]) for n in range(count)]
        insert_rows(visitors)
        started = [now - timedelta(seconds=rng.uniform(3600, 60 * 86400)) for _ in visitors]
        closed = [
            Conversation(
                service=visitor.service,
                visitor=visitor,
                status=Status.CLOSED,
                opening_question="How do I reset my password?",
                message_count=HISTORY_MESSAGES,
                version=HISTORY_MESSAGES + 2,
                started_at=at,
                last_activity_at=at + timedelta(minutes=5),
                closed_at=at + timedelta(minutes=6),
            )
            for visitor, at in zip(visitors, started, strict=True)
        ]
        insert_rows(closed)
        messages = [
            Message(
                conversation=conversation,
                seq=seq,
                role=Role.USER if seq % 2 else Role.AI,
                text="How do I reset my password?" if seq % 2 else "Open Settings, then Security.",
                client_id=f"h{seq}" if seq % 2 else None,
                sentiment=0.0 if seq % 2 else None,
            )
            for conversation in closed
            for seq in range(1, HISTORY_MESSAGES + 1)
        ]
        insert_rows(messages)
        stored += len(messages)
    return stored


def prepare(agents: int) -> dict:
    """Create the agents (console logins with sessions, API tokens) and list what customers say."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import Group, User
    from django.contrib.sessions.backends.db import SessionStore
    from rest_framework.authtoken.models import Token

    from conversations.models import KnowledgeEntry, Service

    group, _ = Group.objects.get_or_create(name="Agents")
    made = []
    for n in range(agents):
        user, _ = User.objects.get_or_create(
            username=f"bench-agent-{n:03d}", defaults={"first_name": f"Agent {n:03d}"}
        )
        user.groups.add(group)
        token, _ = Token.objects.get_or_create(user=user)
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.save()
        made.append(
            {
                "id": user.pk,
                "username": user.username,
                "token": token.key,
                "cookie": f"{settings.SESSION_COOKIE_NAME}={session.session_key}",
            }
        )
    services = []
    for service in Service.objects.order_by("slug"):
        # The knowledge base's own questions: the AI answers them confidently, so the run
        # measures the realtime paths, not escalations the text would trigger.
        lines = [
            entry.question.splitlines()[0]
            for entry in KnowledgeEntry.objects.filter(service=service, is_active=True)
        ]
        if lines:
            services.append({"slug": service.slug, "lines": lines})
    return {"agents": made, "services": services}


def _fill(open_count: int) -> int:
    """Bulk-create open conversations (with flags and claims mixed in) up to `open_count`."""
    from django.contrib.auth.models import User
    from django.utils import timezone

    from conversations.models import Conversation, Service, Status, Visitor
    from escalation.models import Flag, Reason

    missing = open_count - Conversation.objects.filter(status=Status.OPEN).count()
    if missing <= 0:
        return 0
    rng = random.Random(6)
    services = list(Service.objects.prefetch_related("specialists"))
    agents = list(User.objects.filter(username__startswith="bench-agent-")[:10])
    cities = [("Oslo", "", "Norway"), ("Berlin", "Berlin", "Germany"), ("Austin", "TX", "US")]
    now = timezone.now()
    visitors, conversations = [], []
    for n in range(missing):
        service = services[n % len(services)]
        city, region, country = rng.choice(cities)
        visitor = Visitor(service=service, city=city, region=region, country=country)
        visitors.append(visitor)
        specialists = list(service.specialists.all())
        claimed = agents[n % len(agents)] if agents and n % 7 == 0 else None
        conversations.append(
            Conversation(
                service=service,
                visitor=visitor,
                specialist=rng.choice(specialists) if specialists else None,
                opening_question=f"Snapshot question {n}: how do I export my data?",
                message_count=rng.randint(1, 30),
                version=rng.randint(1, 60),
                ai_paused=claimed is not None or n % 11 == 0,
                claimed_by=claimed,
                claimed_at=now if claimed else None,
                waiting_since=now if n % 11 == 0 and claimed is None else None,
            )
        )
    Visitor.objects.bulk_create(visitors, batch_size=1000)
    Conversation.objects.bulk_create(conversations, batch_size=1000)
    flags = [
        Flag(conversation=c, reason=rng.choice([r.value for r in Reason]))
        for n, c in enumerate(conversations)
        if n % 5 == 0 and c.claimed_by is None
    ]
    Flag.objects.bulk_create(flags, batch_size=1000)
    return missing


def snapshot(open_counts: list[int], repeat: int) -> dict:
    """Time `cards.snapshot()` and count its queries at each size (warm, best and median)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from conversations.models import Conversation, Status
    from dashboard import cards

    results = []
    for open_count in sorted(open_counts):
        created = _fill(open_count)
        cards.snapshot()  # warm: first-use imports and the connection
        times, queries = [], []
        for _ in range(repeat):
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                data = cards.snapshot()
                times.append((time.perf_counter() - started) * 1000)
            queries.append(len(captured.captured_queries))
        shown = sum(len(s["conversations"]) for s in data["services"])
        results.append(
            {
                "open_conversations": Conversation.objects.filter(status=Status.OPEN).count(),
                "created": created,
                "cards": shown,
                "bytes": len(json.dumps(data)),
                "ms_median": round(statistics.median(times), 1),
                "ms_min": round(min(times), 1),
                "ms_max": round(max(times), 1),
                "queries": max(queries),
            }
        )
    return {"sizes": results}


def worker_ping(name: str, timeout: float) -> dict:
    """Wait until the named Celery worker answers a ping."""
    from handoff.celery import app

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=0.5)
        if any(key.startswith(f"{name}@") for reply in replies for key in reply):
            return {"ok": True}
    return {"ok": False}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ops")
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--history", type=int, default=0)
    parser.add_argument("--open", type=int, action="append", default=[])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--name", default="bench-worker")
    parser.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args(argv)
    _setup()
    if args.step == "setup":
        result = setup(args.agents, args.history)
    elif args.step == "snapshot":
        result = snapshot(args.open or [2000], args.repeat)
    else:
        result = worker_ping(args.name, args.timeout)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
    # Celery's control connections may hold threads open; this process has said everything.
    sys.stdout.flush()
    os._exit(0)
