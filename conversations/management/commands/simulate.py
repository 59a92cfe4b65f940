"""Drive simulated customers through the real widget socket, for demos, training and load."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass, field

import websockets
from django.core.management.base import BaseCommand, CommandError

from conversations.models import KnowledgeEntry, Service

# What customers say besides the knowledge base's own questions, so every flag shows up.
EXTRA_LINES = {
    "unanswerable": [
        "Can you recommend a good pizza place near the office?",
        "What's the weather going to be like tomorrow?",
        "Do you ship to Antarctica?",
    ],
    "angry": [
        "This is ridiculous, nothing works and I've wasted my whole morning!",
        "Your product is terrible and support is useless. I'm furious.",
    ],
    "human": [
        "Can I talk to a real person please?",
        "I'd like to speak to an agent.",
    ],
    "thanks": ["Thanks, that helps!", "Great, thank you."],
}


@dataclass
class Stats:
    conversations: int = 0
    sent: int = 0
    replies: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Command(BaseCommand):
    help = "Simulate N customers chatting through /ws/chat/SLUG/ on a running server."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--conversations", type=int, default=5, help="How many customers.")
        parser.add_argument("--url", default="ws://127.0.0.1:8000", help="Server's ws(s) origin.")
        parser.add_argument("--service", default=None, help="Service slug (default: all).")
        parser.add_argument("--messages", type=int, default=3, help="Messages per customer.")
        parser.add_argument("--pause", type=float, default=2.0, help="Mean seconds between lines.")
        parser.add_argument("--seed", type=int, default=None, help="Random seed, to replay a run.")

    def handle(self, *args, **options) -> None:
        count = options["conversations"]
        if count < 1:
            raise CommandError("--conversations must be at least 1")
        services = Service.objects.order_by("name")
        if options["service"]:
            services = services.filter(slug=options["service"])
        slugs = list(services.values_list("slug", flat=True))
        if not slugs:
            raise CommandError("No such service; run `manage.py seed_demo` first.")
        questions = {
            slug: [
                entry.question.splitlines()[0]
                for entry in KnowledgeEntry.objects.filter(service__slug=slug, is_active=True)
            ]
            or EXTRA_LINES["unanswerable"]
            for slug in slugs
        }
        rng = random.Random(options["seed"])
        started = time.monotonic()
        stats = asyncio.run(self.run(count, options, slugs, questions, rng))
        self.stdout.write(
            self.style.SUCCESS(
                f"{stats.conversations} customers sent {stats.sent} messages and got "
                f"{stats.replies} replies in {time.monotonic() - started:.1f} s"
            )
        )
        if stats.errors:
            self.stdout.write(f"errors: {stats.errors}")

    async def run(self, count, options, slugs, questions, rng) -> Stats:
        stats = Stats()
        await asyncio.gather(
            *(
                self.customer(n, options, rng.choice(slugs), questions, rng, stats)
                for n in range(count)
            )
        )
        return stats

    def script(self, slug: str, questions: dict, rng: random.Random, length: int) -> list[str]:
        """A plausible conversation: mostly real questions, sometimes trouble."""
        lines = [rng.choice(questions[slug])]
        mood = rng.choices(["happy", "unanswerable", "angry", "human"], weights=[6, 2, 1, 1], k=1)[
            0
        ]
        for _ in range(length - 1):
            if mood == "happy":
                lines.append(rng.choice(questions[slug] + EXTRA_LINES["thanks"]))
            else:
                lines.append(rng.choice(EXTRA_LINES[mood]))
        return lines

    async def customer(self, n, options, slug, questions, rng, stats: Stats) -> None:
        url = f"{options['url'].rstrip('/')}/ws/chat/{slug}/"
        lines = self.script(slug, questions, rng, max(options["messages"], 1))
        await asyncio.sleep(rng.uniform(0, options["pause"]))
        try:
            async with websockets.connect(url) as socket:
                await socket.send(
                    json.dumps(
                        {
                            "type": "hello",
                            "visitor_token": None,
                            "last_seq": 0,
                            "timezone": rng.choice(
                                ["Europe/Berlin", "America/New_York", "Asia/Tokyo", "Europe/Paris"]
                            ),
                            "profile": {"name": f"Simulated customer {n + 1}"},
                        }
                    )
                )
                json.loads(await socket.recv())
                stats.conversations += 1
                for line in lines:
                    await socket.send(
                        json.dumps(
                            {"type": "message", "text": line, "client_id": str(uuid.uuid4())}
                        )
                    )
                    stats.sent += 1
                    # Await first: `stats.replies += await …` would read the total before
                    # the other customers' replies land and lose them.
                    got = await self.read_for(socket, options["pause"] * 2, stats)
                    stats.replies += got
                    await asyncio.sleep(rng.expovariate(1 / max(options["pause"], 0.01)))
        except (OSError, websockets.WebSocketException) as error:
            key = type(error).__name__
            stats.errors[key] = stats.errors.get(key, 0) + 1

    async def read_for(self, socket, seconds: float, stats: Stats) -> int:
        """Read frames for a while; count replies from the AI or an agent."""
        replies = 0
        deadline = time.monotonic() + max(seconds, 0.5)
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = json.loads(await asyncio.wait_for(socket.recv(), left))
            except TimeoutError:
                break
            if frame.get("type") == "message" and frame.get("role") in {"ai", "human"}:
                replies += 1
            elif frame.get("type") == "error":
                stats.errors[frame["code"]] = stats.errors.get(frame["code"], 0) + 1
        return replies
