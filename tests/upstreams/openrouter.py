"""A loopback OpenRouter: POST /chat/completions with image output like §3, with fault switches."""
from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from PIL import Image

from tests.upstreams import common
from tests.upstreams.common import Received, record, tiny_image

API_KEY = "sk-or-v1-test-key"
CREATED = 1764926649
PATHS = ("/chat/completions", "/api/v1/chat/completions")  # base_url with or without /api/v1
FIELDS = frozenset({"model", "messages", "modalities", "image_config", "stream", "user",
                    "max_tokens", "temperature", "provider", "usage"})
RATIOS = frozenset({"1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"})
IMAGE_SIZES = frozenset({"1K", "2K", "4K"})
# Only some models take the extended ratios and 0.5K (Gemini 3.1 Flash Image)
EXTENDED_MODELS = frozenset({"google/gemini-3.1-flash-image"})
EXTENDED_RATIOS = RATIOS | {"1:4", "4:1", "1:8", "8:1"}
# Models whose output is images only; `acme/pixels-only` stands for one no table knows yet
IMAGE_ONLY = ("black-forest-labs/", "sourceful/", "bytedance-seed/", "openai/gpt-image-",
              "acme/pixels-only")
MODALITIES_404 = ("No endpoints found that support the requested output modalities: "
                  "image, text")
MODES = ("ok", "url", "text_only", "empty_images", "content_filter", "auth", "rate_limit",
         "quota", "moderation", "guardrail", "region", "permission", "refusal", "error_in_200",
         "not_found", "unavailable", "bad_request", "not_json")
REFUSAL = "I can't help with creating that image."


PNG = tiny_image("PNG", (30, 160, 90))
PNG_DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


@dataclass
class Recorder(common.Recorder):
    api_key: str = API_KEY
    retry_after: str = "4"



def or_error(status: int, message: str, metadata: dict[str, Any] | None = None, *,
             http_status: int | None = None, headers: dict[str, str] | None = None
             ) -> web.Response:
    error: dict[str, Any] = {"code": status, "message": message}
    if metadata is not None:
        error["metadata"] = metadata
    return web.json_response({"error": error, "user_id": "user_mock"},
                             status=http_status or status, headers=headers)


def _check_image_part(part: Any) -> str | None:
    url = part.get("image_url", {}).get("url") if isinstance(part, dict) else None
    head, _, payload = str(url).partition(";base64,")
    if not head.startswith("data:image/"):
        return "image_url.url must be an https URL or a data:image/...;base64 URI"
    try:
        Image.open(io.BytesIO(base64.b64decode(payload, validate=True))).verify()
    except (binascii.Error, OSError):
        return "image_url data could not be decoded"
    return None


def _check_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or len(messages) != 1 or messages[0].get("role") != "user":
        return "expected one user message"
    content = messages[0].get("content")
    if not isinstance(content, list) or not content or content[0].get("type") != "text":
        return "expected the text part first"
    for part in content[1:]:
        why = "unknown content part" if part.get("type") != "image_url" else None
        why = why or _check_image_part(part)
        if why:
            return why
    return None


def validate(body: Any) -> str | None:
    """What the real service refuses, plus mock-strict checks (no stream, known fields)."""
    if not isinstance(body, dict):
        return "Invalid JSON body"
    unknown = sorted(set(body) - FIELDS)
    if unknown or not body.get("model"):
        return f"Unknown or missing field: {(unknown or ['model'])[0]}"
    if body.get("stream"):
        return "this mock does not stream"
    modalities = body.get("modalities")
    if modalities not in (["image", "text"], ["image"]):
        return "modalities must request image output"
    config = body.get("image_config")
    extended = body["model"] in EXTENDED_MODELS
    if config is not None and (  # mock-strict: an empty image_config means a stray default
            not isinstance(config, dict) or not config
            or not set(config) <= {"aspect_ratio", "image_size"}
            or config.get("aspect_ratio", "1:1") not in (EXTENDED_RATIOS if extended else RATIOS)
            or config.get("image_size", "1K") not in (
                IMAGE_SIZES | {"0.5K"} if extended else IMAGE_SIZES)):
        return "image_config: unsupported aspect_ratio or image_size"
    return _check_messages(body.get("messages"))


def fault(recorder: Recorder) -> web.Response | None:
    retry = {"Retry-After": recorder.retry_after}
    faults = {
        "rate_limit": lambda: or_error(429, "Provider returned error", {
            "provider_name": "Google AI Studio", "raw": "{\"error\": \"quota\"}",
            "error_type": "rate_limit_exceeded"}, headers=retry),
        "quota": lambda: or_error(402, "This request requires more credits, or fewer "
                                  "max_tokens.", {"limit_source": "openrouter_credits"}),
        "moderation": lambda: or_error(403, "Input was flagged", {
            "reasons": ["violence"], "flagged_input": "a gory scene",
            "provider_name": "OpenAI", "model_slug": "openai/gpt-image-1"}),
        "guardrail": lambda: or_error(403, "Request blocked by guardrail: prompt injection "
                                      "patterns detected"),
        "region": lambda: or_error(403, "This model is not available in your region.", {
            "error_type": "region_restricted"}),
        "permission": lambda: or_error(403, "This API key does not have permission to use "
                                       "this model."),
        "refusal": lambda: or_error(400, "Provider returned error", {
            "error_type": "content_policy_violation", "provider_name": "OpenAI"}),
        "error_in_200": lambda: or_error(502, "Provider returned error", {
            "error_type": "provider_unavailable"}, http_status=200),
        "not_found": lambda: or_error(404, "No endpoints found that support image output"),
        "unavailable": lambda: or_error(503, "No available providers", headers=retry),
        "bad_request": lambda: or_error(400, "image_config.aspect_ratio is invalid"),
        "not_json": lambda: web.Response(status=502, text="<html>Bad Gateway</html>",
                                         content_type="text/html"),
    }
    make = faults.get(recorder.mode)
    return make() if make else None


def _message(request: web.Request, mode: str, body: dict[str, Any]) -> dict[str, Any]:
    if mode in ("text_only", "content_filter"):
        return {"role": "assistant", "content": REFUSAL}
    url = PNG_DATA_URL
    if mode == "url":
        url = str(request.url.origin().with_path("/files/image_0.png"))
    images = [] if mode == "empty_images" else [
        {"type": "image_url", "image_url": {"url": url}, "index": 0}]
    content = "" if body["modalities"] == ["image"] else "Here is your image."
    return {"role": "assistant", "content": content, "refusal": None, "images": images}


def success(request: web.Request, recorder: Recorder, body: dict[str, Any]) -> web.Response:
    message = _message(request, recorder.mode, body)
    images = len(message.get("images", []))
    finish = ("content_filter", "IMAGE_SAFETY") if recorder.mode == "content_filter" else (
        "stop", "STOP")
    inputs = len(body["messages"][0]["content"]) - 1
    usage = {"prompt_tokens": 12 + 258 * inputs, "completion_tokens": 1290 * images + 5,
             "total_tokens": 12 + 258 * inputs + 1290 * images + 5, "cost": 0.0387,
             "completion_tokens_details": {"reasoning_tokens": 0, "image_tokens": 1290 * images}}
    choice = {"logprobs": None, "finish_reason": finish[0], "native_finish_reason": finish[1],
              "index": 0, "message": message}
    return web.json_response({"id": "gen-mock", "provider": "Google AI Studio",
                              "model": body["model"], "object": "chat.completion",
                              "created": CREATED, "choices": [choice], "usage": usage})


def make_app(recorder: Recorder) -> web.Application:
    async def completions(request: web.Request) -> web.Response:
        body = await record(recorder, request)
        auth = request.headers.get("Authorization")
        if auth is None:
            return or_error(401, "No auth credentials found")
        if auth != f"Bearer {recorder.api_key}" or recorder.mode == "auth":
            return or_error(401, "User not found.")
        why = validate(body)
        if why:
            return or_error(400, why)
        if str(body["model"]).startswith(IMAGE_ONLY) and body["modalities"] != ["image"]:
            return or_error(404, MODALITIES_404)
        return fault(recorder) or success(request, recorder, body)

    async def files(request: web.Request) -> web.Response:
        recorder.requests.append(Received(request.method, request.path, dict(request.headers)))
        if request.match_info["name"] != "image_0.png":
            return web.Response(status=404, text="Not Found")
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    app.router.add_routes([web.post(path, completions) for path in PATHS])
    app.router.add_get("/files/{name}", files)
    return app
