"""What the mock upstreams share: the request record, the recorder, tiny real images."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    json: Any = None


@dataclass
class Recorder:
    """What a mock saw, and the switch choosing how it answers (one of its MODES)."""

    mode: str = "ok"
    api_key: str = ""
    retry_after: str = "5"
    retry_delay: str = "1.5s"
    requests: list[Received] = field(default_factory=list)


def tiny_image(fmt: str, color: tuple[int, int, int], side: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), color).save(out, fmt)
    return out.getvalue()


async def record(recorder: Recorder, request: web.Request) -> Any:
    """Keeps what the mock received; returns the JSON body (None when it is not JSON)."""
    try:
        body = json.loads(await request.read()) if request.can_read_body else None
    except ValueError:
        body = None
    recorder.requests.append(Received(request.method, request.path, dict(request.headers), body))
    return body
