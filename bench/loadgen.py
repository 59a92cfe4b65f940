"""The load generator: consoles and customers over real sockets, in a process of its own.

Run by the orchestrator as `python -m bench.loadgen CONFIG.json OUT.json`. It speaks SPEC §4
and §5 with the `websockets` client (and the REST API with httpx for the take-over race),
never imports Django, and writes what it measured as JSON. Every time is `time.monotonic()`,
which is one clock for all processes on the machine, so the orchestrator can line the
measurement window up with its CPU samples.

Open loop: each customer sends on its own fixed schedule whatever the server's latency, so
a slow server shows as latency rather than as fewer messages.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets

now = time.monotonic
# Daphne pings clients itself; client pings would only add work to a busy generator.
WS_OPTIONS: dict[str, Any] = {
    "ping_interval": None,
    "compression": None,
    "max_size": 2**24,
    "open_timeout": 60,
    "close_timeout": 2,
}


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/max of latencies in seconds, reported in milliseconds (nearest rank)."""
    if not values:
        return {"samples": 0, "p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(share: float) -> float:
        index = min(len(ordered) - 1, max(0, int(share * len(ordered) + 0.999999) - 1))
        return round(ordered[index] * 1000, 1)

    return {
        "samples": len(ordered),
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "max": round(ordered[-1] * 1000, 1),
    }


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://", 1).rstrip("/") + path


# --- Consoles ----------------------------------------------------------------------------------


@dataclass
class Console:
    """One agent's console: keeps what it was told and when, per conversation."""

    index: int
    url: str
    cookie: str | None
    socket: Any = None
    connected_at: float = 0.0
    snapshot_at: float | None = None
    # Per conversation, each rise of `message_count` and when it arrived (rising, so bisectable).
    counts: dict[str, list[int]] = field(default_factory=dict)
    count_times: dict[str, list[float]] = field(default_factory=dict)
    claims: dict[str, list[tuple[Any, float]]] = field(default_factory=dict)
    thumbs_down: dict[str, float] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    counters: dict | None = None
    frames: list[tuple[float, int]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    last_frame_at: float = 0.0
    closed: str | None = None

    async def connect(self) -> None:
        headers = {"Cookie": self.cookie} if self.cookie else None
        self.connected_at = now()
        self.socket = await websockets.connect(
            ws_url(self.url, "/ws/console/"), additional_headers=headers, **WS_OPTIONS
        )

    async def run(self) -> None:
        try:
            async for raw in self.socket:
                at = now()
                self.last_frame_at = at
                frame = json.loads(raw)
                events = frame["events"] if frame.get("type") == "batch" else [frame]
                cards = 0
                for event in events:
                    cards += self.apply(event, at)
                if cards:
                    self.frames.append((at, cards))
        except websockets.ConnectionClosed as closed:
            self.closed = f"{closed.rcvd.code if closed.rcvd else 1006}"
        except Exception as error:  # a bug here must show in the report, not hang the run
            self.closed = repr(error)

    def apply(self, event: dict, at: float) -> int:
        """Apply one event like a console would; returns how many card events it held."""
        kind = event.get("type")
        if kind == "card":
            self.see(event["card"], at)
            return 1
        if kind == "card_removed":
            self.versions.pop(event["id"], None)
            return 1
        if kind == "counters":
            self.counters = event["counters"]
        elif kind == "attention":
            if "thumbs_down" in event.get("reasons", []):
                self.thumbs_down.setdefault(event["conversation_id"], at)
        elif kind == "snapshot":
            # The first one at connect; later ones when the server resyncs the console, whose
            # cards then show what they say (not counted as updates: the table compares
            # card events with the bare app's).
            first = self.snapshot_at is None
            self.snapshot_at = self.snapshot_at or at
            self.counters = event["counters"]
            self.versions = {}
            for service in event["services"]:
                for card in service["conversations"]:
                    if first:
                        self.versions[card["id"]] = card["version"]
                    else:
                        self.see(card, at)
        elif kind == "error":
            self.errors[event.get("code", "?")] = self.errors.get(event.get("code", "?"), 0) + 1
        return 0

    def see(self, card: dict, at: float) -> None:
        """The console now shows `card`: record a rise of its count or a new claimer."""
        card_id = card["id"]
        counts = self.counts.setdefault(card_id, [])
        if not counts or card["message_count"] > counts[-1]:
            counts.append(card["message_count"])
            self.count_times.setdefault(card_id, []).append(at)
        claimed = (card.get("claimed_by") or {}).get("id")
        claims = self.claims.setdefault(card_id, [])
        if not claims or claims[-1][0] != claimed:
            claims.append((claimed, at))
        if card["version"] > self.versions.get(card_id, 0):
            self.versions[card_id] = card["version"]

    def first_count_at(self, conversation_id: str, seq: int) -> float | None:
        """When this console first saw the conversation's card with `message_count >= seq`."""
        counts = self.counts.get(conversation_id)
        if not counts:
            return None
        index = bisect.bisect_left(counts, seq)
        return self.count_times[conversation_id][index] if index < len(counts) else None

    def first_claim_at(self, conversation_id: str, agent_id: int) -> float | None:
        for claimed, at in self.claims.get(conversation_id, []):
            if claimed == agent_id:
                return at
        return None


# --- Customers ---------------------------------------------------------------------------------


@dataclass
class Sent:
    client_id: str
    at: float
    in_window: bool
    seq: int | None = None
    # When the widget's echo of it came: sent once the message is committed.
    echoed_at: float | None = None


@dataclass
class Customer:
    """One customer's widget: says hello, then asks its questions on a fixed schedule."""

    index: int
    url: str
    slug: str
    lines: list[str]
    bare: bool
    rng: random.Random
    socket: Any = None
    conversation_id: str | None = None
    sent: list[Sent] = field(default_factory=list)
    by_client: dict[str, Sent] = field(default_factory=dict)
    ai_frames: list[tuple[int, float]] = field(default_factory=list)
    last_ai_seq: int | None = None
    feedback_ok_at: float | None = None
    # After a thumbs-down or a take-over the AI may rightly stay silent: stop expecting it.
    ai_expected_until: float = float("inf")
    errors: dict[str, int] = field(default_factory=dict)
    closed: str | None = None

    async def connect(self) -> None:
        self.socket = await websockets.connect(
            ws_url(self.url, f"/ws/chat/{self.slug}/"), **WS_OPTIONS
        )
        if self.bare:
            self.conversation_id = str(uuid.uuid4())
            return
        await self.socket.send(
            json.dumps(
                {
                    "type": "hello",
                    "visitor_token": None,
                    "last_seq": 0,
                    "timezone": "Europe/Berlin",
                    "profile": {"name": f"Bench customer {self.index}"},
                }
            )
        )
        ready = json.loads(await self.socket.recv())
        if ready.get("type") != "ready":
            raise RuntimeError(f"customer {self.index}: expected ready, got {ready}")

    async def run(self) -> None:
        try:
            async for raw in self.socket:
                at = now()
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "message":
                    if frame["role"] == "user" and frame.get("client_id") in self.by_client:
                        sent = self.by_client[frame["client_id"]]
                        sent.seq = frame["seq"]
                        sent.echoed_at = sent.echoed_at or at
                    elif frame["role"] == "ai":
                        self.ai_frames.append((frame["seq"], at))
                        self.last_ai_seq = frame["seq"]
                elif kind == "status":
                    if frame.get("conversation_id"):
                        self.conversation_id = frame["conversation_id"]
                    if frame.get("ai_paused"):
                        # Handed off (a non-answer, say): the AI rightly stays silent now.
                        self.ai_expected_until = min(self.ai_expected_until, at)
                elif kind == "feedback_ok":
                    self.feedback_ok_at = at
                elif kind == "error":
                    code = frame.get("code", "?")
                    self.errors[code] = self.errors.get(code, 0) + 1
        except websockets.ConnectionClosed as closed:
            self.closed = f"{closed.rcvd.code if closed.rcvd else 1006}"
        except Exception as error:
            self.closed = repr(error)

    async def say(self, in_window: bool) -> None:
        client_id = uuid.uuid4().hex
        sent = Sent(client_id=client_id, at=now(), in_window=in_window)
        self.sent.append(sent)
        self.by_client[client_id] = sent
        if self.bare:
            # The bare app has no storage: the customer numbers its own messages.
            sent.seq = len(self.sent)
            frame = {"type": "message", "id": self.conversation_id, "seq": sent.seq}
        else:
            frame = {"type": "message", "text": self.rng.choice(self.lines), "client_id": client_id}
        await self.socket.send(json.dumps(frame))

    def ai_latencies(self) -> tuple[list[float], int]:
        """Each in-window message's wait for its AI reply; and how many never got one."""
        latencies = []
        # A message the server never even acknowledged got no reply either.
        missing = sum(
            1 for s in self.sent if s.in_window and s.seq is None and s.at < self.ai_expected_until
        )
        mine = sorted((s for s in self.sent if s.seq is not None), key=lambda s: s.seq)
        for n, sent in enumerate(mine):
            if not sent.in_window or sent.at >= self.ai_expected_until:
                continue
            upto = mine[n + 1].seq if n + 1 < len(mine) else 1 << 30
            reply = next((at for seq, at in self.ai_frames if sent.seq < seq < upto), None)
            if reply is None:
                missing += 1
            else:
                latencies.append(reply - sent.at)
        return latencies, missing


# --- The run -----------------------------------------------------------------------------------


async def connect_all(items: list, concurrency: int) -> list[str]:
    """Connect sockets a few at a time (daphne's listen backlog is small); return failures."""
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def one(item) -> None:
        async with gate:
            try:
                await item.connect()
            except Exception as error:
                failures.append(f"{type(error).__name__}: {error}")

    await asyncio.gather(*(one(item) for item in items))
    return failures


async def sleep_until(at: float) -> None:
    delay = at - now()
    if delay > 0:
        await asyncio.sleep(delay)


class Race:
    """The take-over race: every agent claims one conversation at once over the REST API."""

    def __init__(self, config: dict) -> None:
        self.agents = config["race_agents"]
        self.clients = [
            httpx.AsyncClient(
                base_url=base,
                timeout=60,
                limits=httpx.Limits(max_connections=len(self.agents) + 5),
            )
            for base in config["web"]
        ]

    def client(self, n: int) -> httpx.AsyncClient:
        return self.clients[n % len(self.clients)]

    async def warm(self) -> None:
        """Open every agent's connection before the clock starts (and check their tokens)."""
        responses = await asyncio.gather(
            *(
                self.client(n).get(
                    "/api/v1/stats/", headers={"Authorization": f"Token {agent['token']}"}
                )
                for n, agent in enumerate(self.agents)
            )
        )
        bad = [r.status_code for r in responses if r.status_code != 200]
        if bad:
            raise RuntimeError(f"agents' tokens refused: {bad[:5]}")

    async def run(self, conversation_id: str) -> dict:
        path = f"/api/v1/conversations/{conversation_id}/take-over/"
        started = now()
        responses = await asyncio.gather(
            *(
                self.client(n).post(path, headers={"Authorization": f"Token {agent['token']}"})
                for n, agent in enumerate(self.agents)
            ),
            return_exceptions=True,
        )
        statuses: dict[str, int] = {}
        winner = None
        for response in responses:
            key = str(response.status_code) if isinstance(response, httpx.Response) else "error"
            statuses[key] = statuses.get(key, 0) + 1
            if key == "200":
                winner = response.json()["claimed_by"]["id"]
        return {
            "conversation_id": conversation_id,
            "started": started,
            "answered_ms": round((now() - started) * 1000, 1),
            "statuses": statuses,
            "winner": winner,
        }

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


async def fanout(config: dict) -> dict:
    """Consoles watch while customers talk; thumbs-downs and take-over races happen meanwhile."""
    bare = config["mode"] == "bare"
    rng = random.Random(config.get("seed", 6))
    web = config["web"]
    consoles = [
        Console(index=n, url=web[n % len(web)], cookie=agent.get("cookie"))
        for n, agent in enumerate(config["consoles"])
    ]
    services = config["services"]
    customers = [
        Customer(
            index=n,
            url=web[n % len(web)],
            slug=services[n % len(services)]["slug"],
            lines=services[n % len(services)]["lines"],
            bare=bare,
            rng=random.Random(rng.random()),
        )
        for n in range(config["customers"])
    ]
    marks: dict[str, float] = {"start": now()}
    failures = await connect_all(consoles, 10)
    readers = [asyncio.ensure_future(c.run()) for c in consoles if c.socket is not None]
    for _ in range(1200):  # up to 60 s for every console's snapshot
        if bare or all(c.snapshot_at or c.closed for c in consoles):
            break
        await asyncio.sleep(0.05)
    refused = [c.closed or "no snapshot" for c in consoles if not (c.snapshot_at or bare)]
    if refused:
        raise RuntimeError(f"{len(refused)} consoles got no snapshot: {refused[:3]}")
    failures += await connect_all(customers, config.get("connect_concurrency", 50))
    readers += [asyncio.ensure_future(c.run()) for c in customers if c.socket is not None]
    marks["connected"] = now()
    if failures:
        raise RuntimeError(f"{len(failures)} sockets failed to connect: {failures[:3]}")

    race = None if bare or not config.get("races") else Race(config)
    if race is not None:
        await race.warm()

    period = 1 / config["rate"]
    warmup = config.get("warmup") or period + 1
    begin = now() + 0.5
    window = (begin + warmup, begin + warmup + config["duration"])
    marks["window_start"], marks["window_end"] = window
    print(f"window {window[0]} {window[1]}", flush=True)  # the orchestrator's profiler waits

    async def drive(customer: Customer) -> None:
        at = begin + customer.rng.uniform(0, period)
        while at < window[1]:
            await sleep_until(at)
            if customer.closed:
                return
            await customer.say(in_window=at >= window[0])
            at += period

    feedbacks: list[dict] = []
    races: list[dict] = []
    used: set[int] = set()

    def pick(need_ai: bool) -> Customer | None:
        choices = [
            c
            for c in customers
            if c.index not in used
            and c.conversation_id
            and not c.closed
            and (c.last_ai_seq is not None or not need_ai)
        ]
        if not choices:
            return None
        chosen = rng.choice(choices)
        used.add(chosen.index)
        return chosen

    async def feedback_at(at: float) -> None:
        await sleep_until(at)
        customer = pick(need_ai=True)
        if customer is None:
            return
        customer.ai_expected_until = now()
        frame = {"type": "feedback", "seq": customer.last_ai_seq, "value": "down"}
        feedbacks.append({"customer": customer.index, "at": now(), "seq": frame["seq"]})
        await customer.socket.send(json.dumps(frame))

    async def race_at(at: float) -> None:
        await sleep_until(at)
        customer = pick(need_ai=False)
        if customer is None:
            return
        customer.ai_expected_until = now()
        result = await race.run(customer.conversation_id)
        result["customer"] = customer.index
        races.append(result)

    side: list[asyncio.Future] = []
    count = 0 if bare else config.get("feedbacks", 0)
    for n in range(count):
        side.append(
            asyncio.ensure_future(feedback_at(window[0] + (n + 0.3) * config["duration"] / count))
        )
    count = 0 if race is None else config["races"]
    for n in range(count):
        side.append(
            asyncio.ensure_future(race_at(window[0] + (n + 0.7) * config["duration"] / count))
        )

    cpu_start = None

    async def mark_cpu() -> None:
        nonlocal cpu_start
        await sleep_until(window[0])
        cpu_start = time.process_time()

    side.append(asyncio.ensure_future(mark_cpu()))
    await asyncio.gather(*(drive(c) for c in customers))
    await asyncio.gather(*side)
    generator_cpu = time.process_time() - (cpu_start or time.process_time())
    marks["sent"] = now()

    # Drain: wait until the consoles have been quiet for a while (everything settled).
    deadline = now() + config.get("drain_max", 30)
    while now() < deadline:
        await asyncio.sleep(0.25)
        quiet = now() - max([c.last_frame_at for c in consoles] + [marks["sent"]])
        if quiet >= config.get("quiet", 2.0):
            break
    marks["drained"] = now()

    consistency = None
    if not bare:
        try:
            consistency = await check_consistency(consoles, config)
        except Exception as error:  # reported, not fatal: the measurements above stand
            consistency = {"error": f"{type(error).__name__}: {error}"}
    for item in [*consoles, *customers]:
        if item.socket is not None:
            await item.socket.close()
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    if race is not None:
        await race.close()

    return summarise(
        consoles, customers, feedbacks, races, window, marks, generator_cpu, consistency, bare
    )


async def check_consistency(consoles: list[Console], config: dict) -> dict:
    """Compare each console's cards and counters with a fresh snapshot once events settled.

    A server still working through a backlog can be quiet for a moment and then send more,
    so a difference is checked again (every second, up to `settle_max` seconds): what counts
    is whether every console ends up equal to the database, and how long that took.
    """
    started = now()
    failures: list[str] = []
    fresh = None
    equal_cards = equal_counters = 0
    while True:
        snapshot = Console(index=-1, url=config["web"][0], cookie=config["consoles"][0]["cookie"])
        try:
            # A server still behind may not even accept a socket in time (daphne gives up
            # on a handshake after 5 s): that is a retry too.
            await snapshot.connect()
            try:
                frame = json.loads(await asyncio.wait_for(snapshot.socket.recv(), 30))
            finally:
                await snapshot.socket.close()
            snapshot.apply(frame, now())
            fresh = snapshot
            equal_cards = sum(1 for c in consoles if c.versions == fresh.versions)
            equal_counters = sum(1 for c in consoles if c.counters == fresh.counters)
        except (OSError, TimeoutError, websockets.WebSocketException) as error:
            failures.append(f"{type(error).__name__}: {error}")
        settled = equal_cards == equal_counters == len(consoles)
        if settled or now() - started > config.get("settle_max", 60):
            break
        await asyncio.sleep(1)
    if fresh is None:
        return {"error": f"no snapshot in {now() - started:.0f} s: {failures[-1]}"}
    return {
        "consoles": len(consoles),
        "cards_equal": equal_cards,
        "counters_equal": equal_counters,
        "settled_after_s": round(now() - started, 1),
        "open_conversations": len(fresh.versions),
        "counters": fresh.counters,
    }


def summarise(
    consoles: list[Console],
    customers: list[Customer],
    feedbacks: list[dict],
    races: list[dict],
    window: tuple[float, float],
    marks: dict[str, float],
    generator_cpu: float,
    consistency: dict | None,
    bare: bool,
) -> dict:
    """Turn what the sockets saw into latencies and losses."""
    latencies: list[float] = []
    echoes: list[float] = []
    by_second: dict[int, list[float]] = {}
    lost = unacknowledged = measured = 0
    for customer in customers:
        for sent in customer.sent:
            if not sent.in_window:
                continue
            measured += 1
            if sent.seq is None or customer.conversation_id is None:
                unacknowledged += 1
                continue
            if sent.echoed_at is not None:
                echoes.append(sent.echoed_at - sent.at)
            for console in consoles:
                seen = console.first_count_at(customer.conversation_id, sent.seq)
                if seen is None:
                    lost += 1
                else:
                    latencies.append(max(seen - sent.at, 0.0))
                    by_second.setdefault(int(sent.at - window[0]), []).append(latencies[-1])
    result: dict[str, Any] = {
        "mode": "bare" if bare else "product",
        "consoles": len(consoles),
        "customers": len(customers),
        "window_s": round(window[1] - window[0], 2),
        "marks": marks,
        "messages_in_window": measured,
        "fanout": {
            **percentiles(latencies),
            "lost": lost,
            "unacknowledged": unacknowledged,
            # When latency grew: p50 and max per second of the window, by sending time.
            "timeline": [
                [second, percentiles(values)["p50"], percentiles(values)["max"]]
                for second, values in sorted(by_second.items())
            ],
        },
        # Sent -> the widget's own echo, sent once the message is committed: the part of
        # the fan-out latency before the console pipeline starts.
        "echo": percentiles(echoes),
        "updates_in_window": sum(
            n for c in consoles for at, n in c.frames if window[0] <= at <= window[1]
        ),
        "frames_in_window": sum(
            1 for c in consoles for at, _ in c.frames if window[0] <= at <= window[1]
        ),
        "generator_cpu_s": round(generator_cpu, 2),
        "console_snapshot_ms": percentiles(
            [c.snapshot_at - c.connected_at for c in consoles if c.snapshot_at]
        ),
        "errors": merge_counts([c.errors for c in [*consoles, *customers]]),
        "closed": sum(1 for c in [*consoles, *customers] if c.closed),
    }
    if bare:
        return result
    ai: list[float] = []
    ai_missing = 0
    for customer in customers:
        waits, missing = customer.ai_latencies()
        ai += waits
        ai_missing += missing
    result["ai_reply"] = {**percentiles(ai), "missing": ai_missing}
    attention: list[float] = []
    attention_lost = 0
    for given in feedbacks:
        conversation_id = customers[given["customer"]].conversation_id
        for console in consoles:
            seen = console.thumbs_down.get(conversation_id)
            if seen is None or seen < given["at"]:
                attention_lost += 1
            else:
                attention.append(seen - given["at"])
    result["attention"] = {**percentiles(attention), "feedbacks": len(feedbacks)}
    result["attention"]["lost"] = attention_lost
    race_rows = []
    for race in races:
        reach = [
            console.first_claim_at(race["conversation_id"], race["winner"]) for console in consoles
        ]
        seen = [at - race["started"] for at in reach if at is not None]
        race_rows.append(
            {
                "statuses": race["statuses"],
                "answered_ms": race["answered_ms"],
                "all_consoles_ms": round(max(seen) * 1000, 1)
                if len(seen) == len(consoles)
                else None,
                "median_console_ms": percentiles(seen)["p50"],
                "missing": len(consoles) - len(seen),
            }
        )
    result["races"] = race_rows
    result["consistency"] = consistency
    return result


def merge_counts(items: list[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for item in items:
        for key, value in item.items():
            merged[key] = merged.get(key, 0) + value
    return merged


async def idle(config: dict) -> dict:
    """Open many widget sockets that say hello and then wait, for the server's RSS per socket."""
    web = config["web"][0]
    services = config["services"]

    def make(n: int) -> Customer:
        service = services[n % len(services)]
        return Customer(
            index=n,
            url=web,
            slug=service["slug"],
            lines=service["lines"],
            bare=False,
            rng=random.Random(n),
        )

    marks: dict[str, float] = {}
    # Warm the process first (first-use imports, geo databases, pools) so only sockets count.
    warm = [make(n) for n in range(config.get("idle_warm", 50))]
    failures = await connect_all(warm, 25)
    for c in warm:
        if c.socket is not None:
            await c.socket.close()
    await asyncio.sleep(config.get("idle_settle", 3))
    marks["before"] = now()
    await asyncio.sleep(min(config.get("idle_settle", 3), 1))  # a sample of the baseline
    sockets = [make(n) for n in range(config["idle_sockets"])]
    failures += await connect_all(sockets, 25)
    marks["opened"] = now()
    await asyncio.sleep(config.get("idle_settle", 3))
    marks["hold_start"] = now()
    await asyncio.sleep(config.get("idle_hold", 3))
    marks["hold_end"] = now()
    for c in sockets:
        if c.socket is not None:
            await c.socket.close()
    return {
        "sockets": sum(1 for c in sockets if c.socket is not None),
        "failures": failures[:5],
        "failed": len(failures),
        "marks": marks,
    }


def main(argv: list[str]) -> None:
    config_path, out_path = argv
    with open(config_path) as handle:
        config = json.load(handle)
    phase = {"fanout": fanout, "idle": idle}[config["phase"]]
    result = asyncio.run(phase(config))
    with open(out_path, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(sys.argv[1:])
