"""The /status page: server-rendered HTML that reloads itself; no script at all."""
from __future__ import annotations

from html import escape

import msgspec
from aiohttp import web
from imagegate.proxy.status import ModelStatus, Status, StatusBoard

REFRESH_S = 5
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1d2330;background:#f7f8fa}
h1{font-size:1.4rem;margin:0 0 .2rem}h2{font-size:1.1rem;margin:1.6rem 0 .5rem}
.meta{color:#5a6270}table{border-collapse:collapse;background:#fff;min-width:40rem}
th,td{border:1px solid #d9dde3;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.healthy{color:#137333;font-weight:600}.resting{color:#b3261e;font-weight:600}
.probing{color:#a05a00;font-weight:600}tr.resting-row{background:#fdecea}
.muted{color:#8a919c}
"""


_encode = msgspec.json.Encoder().encode
NO_STORE = {"Cache-Control": "no-store"}


def status_routes(board: StatusBoard) -> list[web.RouteDef]:
    async def status_json(request: web.Request) -> web.Response:
        return web.Response(body=_encode(board.status()), content_type="application/json",
                            headers=NO_STORE)

    async def status_html(request: web.Request) -> web.Response:
        return web.Response(text=render(board.status()), content_type="text/html",
                            headers=NO_STORE)

    return [web.get("/status.json", status_json), web.get("/status", status_html)]


def render(status: Status) -> str:
    return "".join([
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{REFRESH_S}">',
        "<title>Imagegate status</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Imagegate status</h1>",
        f'<p class=meta id=meta>version {escape(status.version)} · up {_duration(status.uptime_s)}'
        f" (since {escape(_when(status.started_at))}) · {status.workers} worker"
        f"{'s' if status.workers != 1 else ''} · {escape(_when(status.generated_at))}"
        f" · refreshes every {REFRESH_S} s · <a href=/status.json>JSON</a></p>",
        _routes(status),
        _traffic(status),
        _providers(status),
        _keys(status),
        "</body></html>",
    ])


def _table(table_id: str, head: list[str], rows: list[str]) -> str:
    cells = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(rows) or f"<tr><td colspan={len(head)} class=muted>none</td></tr>"
    return f"<table id={table_id}><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _routes(status: Status) -> str:
    rows = []
    for m in status.models:
        for i, r in enumerate(m.routes):
            state = r.state + (f" until {_when(r.resting_until)}" if r.resting_until else "")
            failure = (f"{r.last_failure} at {_when(r.last_failure_at)}" if r.last_failure
                       else "—")
            name = (f"{escape(m.name)}" + (f" <span class=muted>({escape(', '.join(m.aliases))})"
                                           "</span>" if m.aliases else "")) if i == 0 else ""
            row_class = " class=resting-row" if r.state == "resting" else ""
            rows.append(
                f"<tr{row_class} data-model='{escape(m.name)}' data-provider='{escape(r.provider)}'"
                f" data-state={r.state}><td>{name}</td><td>{escape(r.provider)}</td>"
                f"<td>{escape(r.provider_model)}</td><td class=num>{r.priority}</td>"
                f"<td class=num>{r.weight:g}</td><td class={r.state}>{escape(state)}</td>"
                f"<td>{escape(failure)}</td></tr>")
    return "<h2>Models and routes</h2>" + _table(
        "routes", ["model", "provider", "provider model", "priority", "weight", "health",
                   "last failure"], rows)


def _traffic(status: Status) -> str:
    rows = [_traffic_row(m) for m in status.models]
    return (f"<h2>Traffic, last {_duration(status.window_s)}</h2>"
            + _table("traffic", ["model", "requests/min", "images/min", "p50", "p95",
                                 "errors by status"], rows))


def _traffic_row(m: ModelStatus) -> str:
    errors = ", ".join(f"{code}: {share:.1%}" for code, share in m.error_share.items()) or "—"
    return (f"<tr data-model='{escape(m.name)}'><td>{escape(m.name)}</td>"
            f"<td class=num>{m.requests_per_min:g}</td><td class=num>{m.images_per_min:g}</td>"
            f"<td class=num>{_seconds(m.p50_s)}</td><td class=num>{_seconds(m.p95_s)}</td>"
            f"<td>{escape(errors)}</td></tr>")


def _providers(status: Status) -> str:
    rows = [f"<tr data-provider='{escape(p.name)}'><td>{escape(p.name)}</td>"
            f"<td>{escape(p.type)}</td><td class=num>{p.in_flight}</td>"
            f"<td class=num>{p.max_concurrency}"
            + (f" × {status.workers} workers" if status.workers > 1 else "") + "</td></tr>"
            for p in status.providers]
    return "<h2>Providers</h2>" + _table(
        "providers", ["provider", "type", "in flight", "max_concurrency"], rows)


def _keys(status: Status) -> str:
    rows = []
    for k in status.keys:
        cost = "—" if k.cost_usd_today is None else f"${k.cost_usd_today:.4f}"
        budget = " · ".join(_budget(name, limit, k.budget_left.get(name))
                            for name, limit in k.budget.items()) or "no budget"
        rows.append(f"<tr data-key='{escape(k.id)}'><td>{escape(k.id)}</td>"
                    f"<td class=num>{k.requests_today}</td><td class=num>{k.images_today}</td>"
                    f"<td class=num>{cost}</td><td>{escape(budget)}</td></tr>")
    return "<h2>Keys, today (UTC)</h2>" + _table(
        "keys", ["key", "requests", "images", "cost", "budget left"], rows)


def _budget(name: str, limit: float, left: float | None) -> str:
    """`usd_per_day: $0.96 of $1`; before the key's first answer only the budget is known."""
    def amount(value: float) -> str:
        return f"${value:.2f}" if name.startswith("usd") else f"{value:g}"

    rest = "not used yet" if left is None else f"{amount(left)} left"
    return f"{name}: {rest} of {amount(limit)}"


def _when(iso: str | None) -> str:
    return (iso or "").replace("T", " ").replace("+00:00", " UTC")


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"
