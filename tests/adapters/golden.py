"""Shared golden-fixture and mock-upstream helpers for the provider adapter tests."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from imagegate.adapters.base import UpstreamRequest, UpstreamResponse
from imagegate.config.errors import GatewayError
from imagegate.config.images import InputImage
from PIL import Image

FIXTURES = Path(__file__).parent.parent / "fixtures"
KINDS = ("encode", "encode_error", "decode", "decode_error")


def load_cases(provider: str) -> dict[str, dict[str, Any]]:
    """Every golden case in tests/fixtures/<provider>, keyed by file stem, in name order."""
    folder = FIXTURES / provider
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def cases(all_cases: dict[str, dict[str, Any]], kind: str) -> list[Any]:
    """The cases of one kind, each a pytest.param named after its fixture file."""
    return [pytest.param(case, id=name) for name, case in all_cases.items()
            if case["kind"] == kind]


def upstream_response(spec: dict[str, Any]) -> UpstreamResponse:
    body = spec["body_text"].encode() if "body_text" in spec else json.dumps(spec["body"]).encode()
    return UpstreamResponse(status=spec["status"], body=body, headers=spec["headers"],
                            received_at=spec["received_at"])


def plain(value: Any) -> Any:
    """Builtins without the None fields, so fixtures list only what an answer carries."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if v is not None}
    return [plain(v) for v in value] if isinstance(value, list) else value


def assert_error(exc: GatewayError, expected: dict[str, Any]) -> None:
    assert (exc.status, exc.code, exc.param) == (expected["status"], expected["code"],
                                                 expected["param"])
    if "headers" in expected:
        assert exc.headers == expected["headers"]
    assert all(text in exc.message for text in expected.get("message_has", []))
    assert not any(text in exc.message for text in expected.get("message_lacks", []))


def real_image(color: tuple[int, int, int], fmt: str = "PNG") -> InputImage:
    """A real 4x4 image in the given Pillow format."""
    out = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(out, fmt)
    return InputImage(data=out.getvalue(), mime=f"image/{fmt.lower()}", filename="in")


async def call(server: Any, sent: UpstreamRequest, headers: dict[str, str], prefix: str = "",
               received_at: int = 0) -> UpstreamResponse:
    """POST an encoded request to a mock upstream with the given auth headers."""
    sent_headers = {**headers, "Content-Type": sent.content_type}
    async with ClientSession() as session:
        async with session.post(server.make_url(prefix + sent.path), data=sent.body,
                                headers=sent_headers) as answer:
            return UpstreamResponse(status=answer.status, body=await answer.read(),
                                    headers={k.lower(): v for k, v in answer.headers.items()},
                                    received_at=received_at)
