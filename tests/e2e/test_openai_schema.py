"""Every provider's answers, stream events and errors, as the official SDK receives them, checked
against OpenAI's own JSON Schemas (tests/schemas: ImagesResponse, Image*CompletedEvent, Error)."""
from __future__ import annotations

import base64
import io
from typing import Any

import openai
import pytest
from PIL import Image

from tests.conftest import make_config
from tests.schemas import checked_sdk, problems
from tests.upstreams import ark as ark_mock
from tests.upstreams import gemini as gemini_mock
from tests.upstreams import openai as openai_mock
from tests.upstreams import openrouter as or_mock
from tests.upstreams import zai as zai_mock

MOCKS: dict[str, Any] = {"ark": ark_mock, "zai": zai_mock, "openrouter": or_mock,
                         "gemini": gemini_mock}
# public model -> (provider, provider model); one per provider and family that answers
MODELS = {
    "gpt-image-2": ("openai", "gpt-image-2"),
    "seedream-4": ("ark", "doubao-seedream-4-0-250828"),
    "seedream-4.5": ("ark", "doubao-seedream-4-5-251128"),
    "seedream-5": ("ark", "doubao-seedream-5-0-260128"),
    "cogview-4": ("zai", "cogview-4-250304"),
    "or-gemini": ("openrouter", "google/gemini-3.1-flash-image"),
    "or-flux": ("openrouter", "black-forest-labs/flux.2-pro"),
    "gemini-3-pro": ("gemini", "gemini-3-pro-image"),
    "gemini-flash": ("gemini", "gemini-3.1-flash-image"),
    "local": ("local", "local"),
}
EDITS = [m for m, (p, _) in MODELS.items() if p != "zai"]


@pytest.fixture
async def sdk(aiohttp_server: Any, gateway: Any, tmp_path: Any,
              openai_upstream: Any) -> Any:
    providers: dict[str, Any] = {"openai": {"type": "openai", "base_url": openai_upstream[1],
                                            "api_key": openai_mock.API_KEY}}
    for name, mock in MOCKS.items():
        server = await aiohttp_server(mock.make_app(mock.Recorder()))
        providers[name] = {"type": name, "base_url": str(server.make_url("")).rstrip("/"),
                           "api_key": mock.API_KEY}
    models = {public: {"routes": [{"provider": provider, "model": model}]}
              for public, (provider, model) in MODELS.items() if provider != "local"}
    client = await gateway(make_config(tmp_path=tmp_path, providers=providers, models=models))
    sdk = checked_sdk(str(client.make_url("/v1")))
    yield sdk
    await sdk.close()


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 80, 160)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("response_format", ["b64_json", "url"])
async def test_answers_match_openai_schema(sdk: Any, model: str, response_format: str) -> None:
    result = await sdk.images.generate(model=model, prompt="a fox", n=2, size="1024x1536",
                                       quality="high", response_format=response_format)
    assert len(result.data) == 2 and sdk.schema_checks.bodies == 1
    if result.usage is not None:  # the SDK's typed view agrees with the wire
        assert result.usage.input_tokens_details is not None


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("response_format", ["b64_json", "url"])
async def test_stream_events_match_openai_schema(sdk: Any, model: str,
                                                 response_format: str) -> None:
    stream = await sdk.images.generate(model=model, prompt="a fox", n=2, stream=True,
                                       quality="hd", response_format=response_format)
    events = [event async for event in stream]
    assert [e.type for e in events][-1] == "image_generation.completed"
    checked = sdk.schema_checks.events
    assert checked == [e.type for e in events] and len(checked) >= 2
    completed = [e for e in events if e.type == "image_generation.completed"]
    for event in completed:  # b64_json always; the format named is the image's own
        data = base64.b64decode(event.b64_json)
        assert Image.open(io.BytesIO(data)).format.lower() == event.output_format
    assert completed[-1].usage.input_tokens_details is not None


@pytest.mark.parametrize("model", EDITS)
async def test_edit_answers_and_streams_match_openai_schema(sdk: Any, model: str) -> None:
    image = ("a.png", png(), "image/png")
    result = await sdk.images.edit(model=model, prompt="p", image=image)
    assert result.data
    stream = await sdk.images.edit(model=model, prompt="p", image=image, stream=True)
    assert [e.type async for e in stream][-1] == "image_edit.completed"
    assert sdk.schema_checks.bodies == 1 and sdk.schema_checks.events[-1] == "image_edit.completed"


@pytest.mark.parametrize("model", ["seedream-5", "cogview-4", "or-gemini", "gemini-3-pro"])
async def test_errors_match_openai_schema(sdk: Any, model: str) -> None:
    with pytest.raises(openai.BadRequestError):
        await sdk.images.edit(model=model, prompt="p", image=("a.png", png(), "image/png"),
                              mask=("m.png", png(), "image/png"))
    assert sdk.schema_checks.bodies == 1  # the error envelope was checked too


def test_the_checks_catch_what_strict_clients_break_on() -> None:
    """The deviations fixed here, each refused by OpenAI's schema."""
    usage = {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}
    good = {"type": "image_generation.completed", "b64_json": "aGk=", "created_at": 1,
            "size": "1024x1024", "quality": "high", "background": "auto",
            "output_format": "png",
            "usage": {**usage, "input_tokens_details": {"text_tokens": 1, "image_tokens": 0}}}
    assert problems("ImageGenCompletedEvent", good) == []
    for bad in ({"b64_json": None}, {"size": "2K"}, {"size": "8x8"}, {"quality": "hd"},
                {"output_format": "gif"}, {"usage": usage}):
        event = {k: v for k, v in {**good, **bad}.items() if v is not None}
        assert problems("ImageGenCompletedEvent", event), bad
    url_only = {k: v for k, v in good.items() if k != "b64_json"} | {"url": "https://x/y.png"}
    assert problems("ImageGenCompletedEvent", url_only)
    assert problems("ImagesResponse", {"created": 1, "data": [], "usage": usage})
    assert problems("ImagesResponse", {"created": 1, "data": [], "usage": {
        **usage, "input_tokens_details": {"text_tokens": 1, "image_tokens": 0},
        "output_tokens_details": {"image_tokens": 2}}})
