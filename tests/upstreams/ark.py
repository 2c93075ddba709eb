"""A loopback Volcengine Ark: POST /images/generations answering like §2, with fault switches."""
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

API_KEY = "ark-test-key"
CREATED = 1757321139
PATHS = ("/images/generations", "/api/v3/images/generations")  # base_url with or without /api/v3
# Shapes of the TOS links Ark signs: the query carries `&` and `%`.
URL_QUERY = "X-Tos-Algorithm=TOS4-HMAC-SHA256&X-Tos-Expires=86400&X-Tos-Signature=a%2Fb%3D"
FIELDS = frozenset({"model", "prompt", "image", "size", "seed", "guidance_scale",
                    "sequential_image_generation", "sequential_image_generation_options",
                    "stream", "response_format", "watermark", "optimize_prompt_options",
                    "output_format"})
MODES = ("ok", "url", "partial", "all_failed", "no_image", "safety", "risk", "auth",
         "rate_limit", "quota", "overdue", "server_error", "bad_param", "not_found", "not_json")
# Named tiers and total-pixel ranges per family (providers.md §2 and its 2026-12 corrections)
MIN_45 = 2560 * 1440
SAFETY_ITEM = {"error": {"code": "OutputImageSensitiveContentDetected",
                         "message": "The request failed because the output image may contain "
                                    "sensitive information."}}


JPEG = tiny_image("JPEG", (40, 120, 200))
PNG = tiny_image("PNG", (40, 120, 200))


@dataclass
class Recorder(common.Recorder):
    api_key: str = API_KEY
    retry_after: str = "7"



def ark_error(status: int, code: str, message: str, *, param: str = "", kind: str = "BadRequest",
              headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"code": code, "message": f"{message} Request id: 0217mock",
                      "param": param, "type": kind}}
    return web.json_response(body, status=status, headers=headers)


def _bad(param: str, why: str) -> web.Response:
    return ark_error(400, "InvalidParameter",
                     f"The parameter `{param}` specified in the request are not valid: {why}.",
                     param=param)


def _check_image(value: Any) -> str | None:
    items = value if isinstance(value, list) else [value]
    if not items or len(items) > 14 or not all(isinstance(item, str) for item in items):
        return "expected a string or 1-14 strings"
    for item in items:
        head, _, payload = item.partition(";base64,")
        if not head.startswith("data:image/") or head != head.lower():
            return "expected data:image/<format>;base64,<data>"
        try:
            Image.open(io.BytesIO(base64.b64decode(payload, validate=True))).verify()
        except (binascii.Error, OSError):
            return "the image cannot be decoded"
    return None


def _family(model: str) -> tuple[frozenset[str], int, int]:
    """(named tiers, min pixels, max pixels) of a Seedream 4+ model."""
    if "seedream-4-5" in model:
        return frozenset({"2K", "4K"}), MIN_45, 4096 * 4096
    if "seedream-5-0-pro" in model:
        return frozenset({"2K"}), MIN_45, 2048 * 2048
    if "seedream-5" in model:
        return frozenset({"2K", "3K"}), MIN_45, 10_404_496
    return frozenset({"1K", "2K", "4K"}), 1280 * 720, 4096 * 4096


def _check_size(model: str, size: Any) -> str | None:
    if "seededit" in model:
        return None if size in (None, "adaptive") else "SeedEdit takes `adaptive` only"
    if size is None:
        return None
    width, _, height = str(size).partition("x")
    if "seedream-3-0-t2i" in model:
        if not (width.isdigit() and height.isdigit()):
            return "expected WxH"
        w, h = int(width), int(height)
        return None if 512 <= min(w, h) and max(w, h) <= 2048 else "out of [512, 2048]"
    tiers, low, high = _family(model)
    if size in tiers:
        return None
    if not (width.isdigit() and height.isdigit()):
        return f"expected one of {sorted(tiers)} or WxH"
    w, h = int(width), int(height)
    if w * h < low:
        return f"image size must be at least {low} pixels"
    ok = w * h <= high and 1 / 16 <= w / h <= 16
    return None if ok else f"pixels out of [{low}, {high}]"


def validate(body: Any) -> web.Response | None:
    """Ark's 400 for what the real service refuses, plus mock-strict checks (`n`, `watermark`)."""
    if not isinstance(body, dict):
        return _bad("body", "expected a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:  # `n` lands here: the official schema has no `n`
        return _bad(unknown[0], "unknown parameter")
    for name in ("model", "prompt", "watermark"):  # watermark: Ark defaults to true
        if name not in body:
            return _bad(name, "the parameter is required by this mock")
    model = str(body["model"])
    if "seedream-3-0-t2i" in model and "image" in body:
        return _bad("image", "the model does not support input images")
    if "seededit" in model and not isinstance(body.get("image"), str):
        return _bad("image", "SeedEdit takes exactly one image string")
    if "seed" in body and not ("seededit" in model or "seedream-3-0-t2i" in model):
        return _bad("seed", "the model does not support seed")
    why = _check_image(body["image"]) if "image" in body else None
    if why:
        return _bad("image", why)
    why = _check_size(model, body.get("size"))
    if why:
        return _bad("size", why)
    if "output_format" in body and not ("seedream-5" in model
                                        and body["output_format"] in ("png", "jpeg")):
        return _bad("output_format", "only Seedream 5.0 takes png or jpeg")
    if body.get("response_format", "url") not in ("url", "b64_json"):
        return _bad("response_format", "expected url or b64_json")
    return None


def fault(recorder: Recorder) -> web.Response | None:
    retry = {"Retry-After": recorder.retry_after}
    faults = {
        "safety": lambda: ark_error(400, "InputTextSensitiveContentDetected",
                                    "The request failed because the input text may contain "
                                    "sensitive information."),
        "rate_limit": lambda: ark_error(429, "RateLimitExceeded.EndpointRPMExceeded",
                                        "Your account has exceeded the RPM limit.",
                                        kind="TooManyRequests", headers=retry),
        "quota": lambda: ark_error(429, "QuotaExceeded", "Your free quota is used up.",
                                   kind="TooManyRequests"),
        "overdue": lambda: ark_error(403, "AccountOverdueError", "The request failed because "
                                     "your account 2100123 has an overdue balance.",
                                     kind="Forbidden"),
        "risk": lambda: ark_error(400, "OutputImageRiskDetection", "The request could not be "
                                  "processed because the output image includes sensitive "
                                  "content that violates ContentSecurityDetection. "
                                  "CSDRequestId:0217;Label:x;SubLabel:y"),
        "server_error": lambda: ark_error(500, "InternalServiceError", "Internal error.",
                                          kind="InternalServerError"),
        "bad_param": lambda: _bad("size", "mock fault"),
        "not_found": lambda: ark_error(404, "InvalidEndpointOrModel.NotFound",
                                       "The model or endpoint does not exist or you do not "
                                       "have access to it.", kind="NotFound"),
        "not_json": lambda: web.Response(status=502, text="<html>Bad Gateway</html>",
                                         content_type="text/html"),
    }
    make = faults.get(recorder.mode)
    return make() if make else None


def _image_item(request: web.Request, recorder: Recorder, body: dict[str, Any]) -> dict[str, str]:
    if recorder.mode == "url" or body.get("response_format", "url") == "url":
        url = request.url.origin().with_path("/files/image_0.jpeg")
        return {"url": f"{url}?{URL_QUERY}", "size": "8x8"}
    made = PNG if body.get("output_format") == "png" else JPEG  # 4.x: always JPEG
    return {"b64_json": base64.b64encode(made).decode(), "size": "8x8"}


def success(request: web.Request, recorder: Recorder, body: dict[str, Any]) -> web.Response:
    good: dict[str, Any] = _image_item(request, recorder, body)
    sets: dict[str, list[dict[str, Any]]] = {
        "partial": [good, SAFETY_ITEM], "all_failed": [SAFETY_ITEM, SAFETY_ITEM], "no_image": [],
    }
    data = sets.get(recorder.mode, [good])
    made = sum(1 for item in data if "error" not in item)
    usage = {"generated_images": made, "output_tokens": 16384 * made,
             "total_tokens": 16384 * made}
    return web.json_response({"model": body["model"], "created": CREATED, "data": data,
                              "usage": usage})


def make_app(recorder: Recorder) -> web.Application:
    async def generations(request: web.Request) -> web.Response:
        body = await record(recorder, request)
        authorized = request.headers.get("Authorization") == f"Bearer {recorder.api_key}"
        if not authorized or recorder.mode == "auth":
            return ark_error(401, "AuthenticationError", "the API key or AK/SK in the request "
                             "is missing or invalid.", kind="Unauthorized")
        return validate(body) or fault(recorder) or success(request, recorder, body)

    async def files(request: web.Request) -> web.Response:
        recorder.requests.append(Received(request.method, request.path, dict(request.headers)))
        if request.match_info["name"] != "image_0.jpeg":
            return web.Response(status=404, text="NoSuchKey")
        return web.Response(body=JPEG, content_type="image/jpeg")

    app = web.Application()
    app.router.add_routes([web.post(path, generations) for path in PATHS])
    app.router.add_get("/files/{name}", files)
    return app
