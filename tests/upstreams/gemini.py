"""A loopback Gemini API: POST /models/{model}:generateContent answering like §4, with faults."""
from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from PIL import Image

from tests.upstreams import common
from tests.upstreams.common import record, tiny_image

API_KEY = "AIza-test-key"
PREFIXES = ("/models/", "/v1beta/models/")  # base_url with or without /v1beta
RATIOS = frozenset({"1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"})
EXTENDED = RATIOS | {"1:4", "4:1", "1:8", "8:1"}
# The image models served today and what each takes: (aspect ratios, imageSize values). The
# `*-preview` ids were shut down 2026-06-25 and gemini-2.5-flash-image 2026-10-02: 404.
MODELS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "gemini-3-pro-image": (RATIOS, frozenset({"1K", "2K", "4K"})),
    "gemini-3.1-flash-image": (EXTENDED, frozenset({"512", "1K", "2K", "4K"})),
    "gemini-3.1-flash-lite-image": (RATIOS, frozenset({"1K", "2K", "4K"})),
}
FIELDS = frozenset({"contents", "generationConfig", "safetySettings", "systemInstruction"})
CONFIG_FIELDS = frozenset({"responseModalities", "imageConfig", "candidateCount"})
MODES = ("ok", "jpeg", "thought", "text_only", "block_reason", "image_safety", "no_image",
         "auth", "rate_limit", "not_found", "unavailable", "internal", "deadline",
         "bad_request")
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


FINAL_PNG = tiny_image("PNG", (20, 90, 200))
DRAFT_PNG = tiny_image("PNG", (200, 30, 30))  # a `thought: true` interim image: never the answer
JPEG = tiny_image("JPEG", (240, 200, 40))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Recorder(common.Recorder):
    api_key: str = API_KEY
    retry_delay: str = "1.5s"



def google_error(status: int, state: str, message: str,
                 details: list[dict[str, Any]] | None = None) -> web.Response:
    error: dict[str, Any] = {"code": status, "message": message, "status": state}
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=status)


def bad_key() -> web.Response:
    message = "API key not valid. Please pass a valid API key."
    return google_error(400, "INVALID_ARGUMENT", message, [
        {"@type": ERROR_INFO, "reason": "API_KEY_INVALID", "domain": "googleapis.com",
         "metadata": {"service": "generativelanguage.googleapis.com"}},
        {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
         "message": message}])


def _bad(why: str) -> web.Response:
    return google_error(400, "INVALID_ARGUMENT", f"Invalid JSON payload received. {why}")


def _check_parts(contents: Any) -> str | None:
    if not isinstance(contents, list) or len(contents) != 1 or contents[0].get("role") != "user":
        return "expected one user turn"
    parts = contents[0].get("parts")
    if not isinstance(parts, list) or not parts or "text" not in parts[0]:
        return "expected the text part first"
    for part in parts[1:]:
        blob = part.get("inlineData") if isinstance(part, dict) else None
        if not isinstance(blob, dict) or not str(blob.get("mimeType")).startswith("image/"):
            return "expected inlineData parts with an image mimeType"
        try:
            Image.open(io.BytesIO(base64.b64decode(blob.get("data", ""), validate=True))).verify()
        except (binascii.Error, OSError):
            return "inlineData.data is not raw base64 of an image"
    return None


def validate(body: Any, model: str) -> str | None:
    """What the real service refuses, plus mock-strict checks (camelCase, known fields)."""
    if not isinstance(body, dict):
        return "Expected a JSON object."
    unknown = sorted(set(body) - FIELDS) or sorted(
        set(body.get("generationConfig", {})) - CONFIG_FIELDS)
    if unknown:
        return f'Unknown name "{unknown[0]}": Cannot find field.'
    config = body.get("generationConfig", {})
    if config.get("responseModalities") not in (["TEXT", "IMAGE"], ["IMAGE"]):
        return "responseModalities must ask for IMAGE."
    image = config.get("imageConfig")
    ratios, sizes = MODELS[model]
    if image is not None and (not image or not set(image) <= {"aspectRatio", "imageSize"}
                              or image.get("aspectRatio", "1:1") not in ratios
                              or image.get("imageSize", "1K") not in sizes):
        return "imageConfig: unsupported aspectRatio or imageSize."
    return _check_parts(body.get("contents"))


def not_found(model: str) -> web.Response:
    return google_error(404, "NOT_FOUND", f"models/{model} is not found for API version v1beta, "
                        "or is not supported for generateContent.")


def fault(recorder: Recorder, model: str) -> web.Response | None:
    faults = {
        "rate_limit": lambda: google_error(429, "RESOURCE_EXHAUSTED", "You exceeded your "
                                           "current quota, please check your plan.", [
            {"@type": "type.googleapis.com/google.rpc.Help", "links": []},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo",
             "retryDelay": recorder.retry_delay}]),
        "not_found": lambda: not_found(model),
        "unavailable": lambda: google_error(503, "UNAVAILABLE", "The model is overloaded."),
        "internal": lambda: google_error(500, "INTERNAL", "An internal error has occurred."),
        "deadline": lambda: google_error(504, "DEADLINE_EXCEEDED", "Deadline expired."),
        "bad_request": lambda: google_error(400, "INVALID_ARGUMENT",
                                            "Unable to process input image."),
    }
    make = faults.get(recorder.mode)
    return make() if make else None


def _parts(mode: str) -> list[dict[str, Any]]:
    final = {"inlineData": {"mimeType": "image/png", "data": b64(FINAL_PNG)}}
    parts: dict[str, list[dict[str, Any]]] = {
        "jpeg": [{"inlineData": {"mimeType": "image/jpeg", "data": b64(JPEG)}}],
        "thought": [{"text": "Planning the composition.", "thought": True},
                    {"inlineData": {"mimeType": "image/png", "data": b64(DRAFT_PNG)},
                     "thought": True},
                    {"text": "Here is the final image."},
                    {**final, "thoughtSignature": "c2lnbmF0dXJl"}],
        "text_only": [{"text": "I can describe it, but here is no image."}],
        "image_safety": [],
        "no_image": [],
    }
    return parts.get(mode, [{"text": "Here is your image: "}, final])


def success(recorder: Recorder, model: str, body: dict[str, Any]) -> web.Response:
    inputs = len(body["contents"][0]["parts"]) - 1
    prompt = [{"modality": "TEXT", "tokenCount": 12}]
    prompt += [{"modality": "IMAGE", "tokenCount": 258 * inputs}] if inputs else []
    thoughts = 200 if recorder.mode == "thought" else 0  # Gemini 3 bills its thinking
    usage = {"promptTokenCount": 12 + 258 * inputs, "candidatesTokenCount": 1296,
             "thoughtsTokenCount": thoughts,
             "totalTokenCount": 12 + 258 * inputs + 1296 + thoughts, "promptTokensDetails": prompt,
             "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}]}
    if recorder.mode == "block_reason":
        return web.json_response({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                                  "usageMetadata": {"promptTokenCount": 12,
                                                    "totalTokenCount": 12},
                                  "modelVersion": model})
    finish = {"image_safety": "IMAGE_SAFETY", "no_image": "NO_IMAGE"}.get(recorder.mode, "STOP")
    candidate = {"content": {"parts": _parts(recorder.mode), "role": "model"},
                 "finishReason": finish,
                 "index": 0}
    return web.json_response({"candidates": [candidate], "usageMetadata": usage,
                              "modelVersion": model, "responseId": "mock-response"})


def make_app(recorder: Recorder) -> web.Application:
    async def generate(request: web.Request) -> web.Response:
        body = await record(recorder, request)
        key = request.headers.get("x-goog-api-key")
        if key is None:
            return google_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered "
                                "callers (callers without established identity).")
        if key != recorder.api_key or recorder.mode == "auth":
            return bad_key()
        model, _, action = request.match_info["tail"].partition(":")
        if action != "generateContent" or model not in MODELS:
            return not_found(model)
        why = validate(body, model)
        if why:
            return _bad(why)
        return fault(recorder, model) or success(recorder, model, body)

    app = web.Application()
    app.router.add_routes([web.post(prefix + "{tail:.+}", generate) for prefix in PREFIXES])
    return app
