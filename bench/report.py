"""The readable side of a run: the results table and the issue's targets, met or not."""

from __future__ import annotations

from typing import Any


def _load(result: dict, name: str) -> dict | None:
    return next((e for e in result.get("loads", []) if e["load"]["name"] == name), None)


def _target(name: str, goal: str, value: Any, met: bool | None) -> dict:
    return {"target": name, "goal": goal, "value": value, "met": met}


def targets(result: dict) -> list[dict]:
    """The issue's targets, each with the measured value; `met` is None when not measured."""
    rows = []
    l2, l3 = _load(result, "L2"), _load(result, "L3")
    if l2 is not None:
        product = l2["product"]
        fanout = product["fanout"]
        lost = fanout["lost"] + fanout["unacknowledged"]
        rows.append(
            _target(
                "L2 fan-out p99",
                "<= 250 ms, nothing lost",
                f"{fanout['p99']} ms, lost {lost}",
                fanout["p99"] is not None and fanout["p99"] <= 250 and lost == 0,
            )
        )
        ai = product["ai_reply"]
        rows.append(
            _target(
                "L2 AI reply p99",
                "<= 500 ms",
                f"{ai['p99']} ms (missing {ai['missing']})",
                ai["p99"] is not None and ai["p99"] <= 500,
            )
        )
        attention = product["attention"]
        rows.append(
            _target(
                "L2 thumbs-down -> attention p99",
                "<= 500 ms",
                f"{attention['p99']} ms (lost {attention['lost']})",
                attention["p99"] is not None and attention["p99"] <= 500,
            )
        )
    else:
        rows += [_target(n, g, "not run", None) for n, g in _L2_GOALS]
    if l3 is not None:
        fanout = l3["product"]["fanout"]
        lost = fanout["lost"] + fanout["unacknowledged"]
        rows.append(
            _target(
                "L3 (2 web) fan-out",
                "nothing lost, p99 <= 1 s",
                f"{fanout['p99']} ms, lost {lost}",
                fanout["p99"] is not None and fanout["p99"] <= 1000 and lost == 0,
            )
        )
    else:
        rows.append(_target("L3 (2 web) fan-out", "nothing lost, p99 <= 1 s", "not run", None))
    ratios = [
        (e["load"]["name"], e["ratio_vs_bare"])
        for e in result.get("loads", [])
        if "ratio_vs_bare" in e
    ]
    if ratios:
        name, ratio = next(((n, r) for n, r in ratios if n == "L2"), ratios[-1])
        rows.append(
            _target(
                f"console updates per server CPU-s vs bare ({name})",
                ">= 3x",
                f"{ratio}x",
                ratio >= 3,
            )
        )
    else:
        rows.append(_target("console updates per server CPU-s vs bare", ">= 3x", "not run", None))
    snapshot = result.get("snapshot")
    if snapshot:
        sizes = snapshot["sizes"]
        largest = sizes[-1]
        constant = len({s["queries"] for s in sizes}) == 1
        rows.append(
            _target(
                f"snapshot of {largest['open_conversations']} open conversations",
                "<= 300 ms, constant queries",
                f"{largest['ms_median']} ms, queries "
                + " / ".join(f"{s['queries']} at {s['open_conversations']}" for s in sizes),
                largest["ms_median"] <= 300 and constant,
            )
        )
    else:
        rows.append(_target("snapshot", "<= 300 ms, constant queries", "not run", None))
    idle = next((e["idle_sockets"] for e in result.get("loads", []) if "idle_sockets" in e), None)
    if idle:
        rows.append(
            _target(
                f"memory per idle widget socket ({idle['sockets']} sockets)",
                "<= 64 KiB",
                f"{idle['kib_per_socket']} KiB",
                idle["kib_per_socket"] <= 64 and idle["failed"] == 0,
            )
        )
    else:
        rows.append(_target("memory per idle widget socket", "<= 64 KiB", "not run", None))
    return rows


_L2_GOALS = [
    ("L2 fan-out p99", "<= 250 ms, nothing lost"),
    ("L2 AI reply p99", "<= 500 ms"),
    ("L2 thumbs-down -> attention p99", "<= 500 ms"),
]


def _grid(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _ms(stats: dict | None, key: str) -> Any:
    return None if not stats else stats.get(key)


def table(result: dict) -> str:
    """The run as text: fan-out per load, CPU, the other measurements, then the targets."""
    out = []
    env = result["environment"]
    out.append(
        f"Human Handoff benchmark, {result['started_at']}: {env['cpus']} CPUs, Python "
        f"{env['python']}, Django {env['django']}, Channels {env['channels']}, channels-redis "
        f"{env['channels_redis']}, daphne {env['daphne']}; layer "
        f"{result['options'].get('layer') or 'settings default'}; loadavg at start "
        f"{env['loadavg_at_start']}; Python speed {env.get('python_speed_ms', '?')} ms "
        "(a fixed loop: higher is a slower machine)"
    )
    rows = []
    for entry in result.get("loads", []):
        load = entry["load"]
        shape = f"{load['consoles']}c/{load['customers']}u/{load['rate']}/s/{load['web']}w"
        for mode in ("product", "bare"):
            data = entry.get(mode)
            if not data:
                continue
            fanout = data["fanout"]
            rows.append(
                [
                    load["name"],
                    mode,
                    shape,
                    data["messages_in_window"],
                    fanout["p50"],
                    fanout["p95"],
                    fanout["p99"],
                    fanout["max"],
                    fanout["lost"] + fanout["unacknowledged"],
                    data["updates_per_s"],
                    data["server_cpu_s"],
                    data.get("updates_per_cpu_s"),
                    data.get("cpu_ms_per_message"),
                    data["generator_cpu_s"],
                    "/".join(str(x) for x in entry["loadavg_before"]),
                ]
            )
    if rows:
        out.append("")
        out.append("Fan-out: customer message -> its card on every console (ms)")
        out.append(
            _grid(
                [
                    "load",
                    "app",
                    "shape",
                    "msgs",
                    "p50",
                    "p95",
                    "p99",
                    "max",
                    "lost",
                    "upd/s",
                    "srv CPU-s",
                    "upd/CPU-s",
                    "CPU ms/msg",
                    "gen CPU-s",
                    "loadavg",
                ],
                rows,
            )
        )
    rows = []
    for entry in result.get("loads", []):
        data = entry.get("product")
        if not data:
            continue
        ai, att = data["ai_reply"], data["attention"]
        echo = data.get("echo") or {}
        races = data.get("races", [])
        reach = [r["all_consoles_ms"] for r in races]
        rows.append(
            [
                entry["load"]["name"],
                _ms(echo, "p50"),
                _ms(echo, "p99"),
                _ms(ai, "p50"),
                _ms(ai, "p99"),
                ai["missing"],
                _ms(att, "p50"),
                _ms(att, "p99"),
                att["lost"],
                ", ".join(str(r) for r in reach) or None,
                ", ".join(
                    f"{r['statuses'].get('200', 0)}x200/{r['statuses'].get('409', 0)}x409"
                    for r in races
                )
                or None,
                entry.get("ratio_vs_bare"),
                entry.get("ratio_vs_bare_all"),
                _consistency(data.get("consistency")),
            ]
        )
    if rows:
        out.append("")
        out.append(
            "Echo (message sent -> committed and echoed to its widget), AI replies, "
            "thumbs-down -> attention, take-over races (ms), vs bare"
        )
        out.append(
            _grid(
                [
                    "load",
                    "echo p50",
                    "echo p99",
                    "AI p50",
                    "AI p99",
                    "AI missing",
                    "attn p50",
                    "attn p99",
                    "attn lost",
                    "race: winner on all consoles",
                    "race answers",
                    "ours/bare",
                    "ours/bare incl. PG",
                    "consoles == fresh snapshot",
                ],
                rows,
            )
        )
    rows = []
    for entry in result.get("loads", []):
        for mode in ("product", "bare"):
            data = entry.get(mode)
            if not data:
                continue
            for name, cpu in data["cpu_percent"].items():
                rows.append([entry["load"]["name"], mode, name, cpu, data["rss_mb"].get(name)])
    if rows:
        out.append("")
        out.append("CPU (% of one core over the window) and peak RSS (MiB) per process")
        out.append(_grid(["load", "app", "process", "CPU %", "RSS MiB"], rows))
    idle = next((e["idle_sockets"] for e in result.get("loads", []) if "idle_sockets" in e), None)
    if idle:
        out.append("")
        out.append(
            f"Idle widget sockets: {idle['sockets']} open, web RSS {idle['rss_before_mb']} -> "
            f"{idle['rss_during_mb']} MiB = {idle['kib_per_socket']} KiB per socket"
        )
    snapshot = result.get("snapshot")
    if snapshot:
        out.append("")
        out.append(
            "Console snapshot, in-process (ms over repeats; queries by CaptureQueriesContext)"
        )
        out.append(
            _grid(
                ["open", "cards", "KiB", "median", "min", "max", "queries"],
                [
                    [
                        s["open_conversations"],
                        s["cards"],
                        round(s["bytes"] / 1024),
                        s["ms_median"],
                        s["ms_min"],
                        s["ms_max"],
                        s["queries"],
                    ]
                    for s in snapshot["sizes"]
                ],
            )
        )
    for entry in result.get("loads", []):
        found = (entry.get("product") or {}).get("profile")
        if found:
            out.append("")
            name = entry["load"]["name"]
            out.append(f"Where the time goes ({name}, py-spy wall time per thread)")
            out.extend(_profile_lines(found))
    out.append("")
    out.append("Targets (issue 6)")
    out.append(
        _grid(
            ["target", "goal", "measured", "met"],
            [
                [
                    t["target"],
                    t["goal"],
                    t["value"],
                    {True: "yes", False: "NO", None: "-"}[t["met"]],
                ]
                for t in result.get("targets", [])
            ],
        )
    )
    return "\n".join(out)


def _consistency(found: dict | None) -> str | None:
    if not found:
        return None
    if "error" in found:
        return f"not checked: {found['error'][:60]}"
    return (
        f"{found['cards_equal']}/{found['consoles']} cards, {found['counters_equal']} counters"
        f" (after {found.get('settled_after_s', 0)} s)"
    )


def _profile_lines(found: dict, threads: int = 4, frames: int = 8) -> list[str]:
    lines = []
    if "error" in found:
        lines.append(f"  ({found['error']})")
    for process, data in found.items():
        if not isinstance(data, dict) or "threads" not in data:
            continue
        for thread, info in list(data["threads"].items())[:threads]:
            lines.append(f"  {process} / {thread} ({info['samples']} samples):")
            for frame, share in info["top"][:frames]:
                lines.append(f"    {share:5.1f}%  {frame}")
    return lines
