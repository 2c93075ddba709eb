"""A loopback Zhipu / Z.AI: POST /images/generations answering like §5, with fault switches."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.upstreams import common
from tests.upstreams.common import Received, record, tiny_image

API_KEY = "zai-test-key"
CREATED = 1760335349
PATHS = ("/images/generations", "/api/paas/v4/images/generations")
FIELDS = frozenset({"model", "prompt", "size", "quality", "user_id", "watermark_enabled"})
MODELS = frozenset({"glm-image", "cogview-4-250304", "cogview-4", "cogview-3-flash"})
MODES = ("ok", "empty", "safety", "auth", "rate_limit", "arrears", "bad_param",
         "model_not_found", "server_error", "not_json")
UNSAFE = ("系统检测到输入或生成内容可能包含不安全或敏感内容，"
          "请您避免输入易产生敏感内容的提示语，感谢您的配合。")
GLM_PRESETS = frozenset({"1280x1280", "1568x1056", "1056x1568", "1472x1088", "1088x1472",
                         "1728x960", "960x1728"})


PNG = tiny_image("PNG", (220, 180, 20))


@dataclass
class Recorder(common.Recorder):
    api_key: str = API_KEY
    retry_after: str = "5"



def zai_error(status: int, code: str, message: str,
              headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers)


def _bad(name: str) -> web.Response:
    return zai_error(400, "1214", f"{name}参数非法。请检查文档。")


def size_ok(model: str, size: str) -> bool:
    """§5.1's custom-size rule per family (presets always pass)."""
    width, _, height = size.partition("x")
    if not (width.isdigit() and height.isdigit()):
        return False
    w, h = int(width), int(height)
    if model == "glm-image":
        custom = 1024 <= min(w, h) and max(w, h) <= 2048 and w % 32 == 0 and h % 32 == 0
        return size in GLM_PRESETS or (custom and w * h <= 2**22)
    custom = 512 <= min(w, h) and max(w, h) <= 2048 and w % 16 == 0 and h % 16 == 0
    return custom and w * h <= 2**21


def validate(body: Any) -> web.Response | None:
    """Z.AI's 400s, plus mock-strict checks: no unknown fields, `watermark_enabled` explicit."""
    if not isinstance(body, dict):
        return zai_error(400, "1210", "请求参数错误")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        return _bad(unknown[0])
    for name in ("model", "prompt", "watermark_enabled"):
        if name not in body:
            return zai_error(400, "1213", f"未正常接收到{name}参数")
    if body["model"] not in MODELS:
        return zai_error(400, "1211", "模型不存在，请检查模型代码。")
    allowed = {"hd"} if body["model"] == "glm-image" else {"hd", "standard"}
    if body.get("quality", "hd") not in allowed:
        return _bad("quality")
    if "size" in body and not size_ok(body["model"], str(body["size"])):
        return _bad("size")
    if "user_id" in body and not 6 <= len(str(body["user_id"])) <= 128:
        return _bad("user_id")
    return None


def fault(recorder: Recorder) -> web.Response | None:
    faults = {
        "safety": lambda: zai_error(400, "1301", UNSAFE),
        "rate_limit": lambda: zai_error(429, "1302", "High concurrency usage of this API, please "
                                                     "reduce concurrency or contact customer "
                                                     "service to increase limits",
                                        headers={"Retry-After": recorder.retry_after}),
        "arrears": lambda: zai_error(429, "1113", "您的账户已欠费，请充值后重试。"),
        "bad_param": lambda: _bad("size"),
        "model_not_found": lambda: zai_error(400, "1211", "模型不存在，请检查模型代码。"),
        "server_error": lambda: zai_error(500, "500", "Internal Error"),
        "not_json": lambda: web.Response(status=503, text="<html>Service Unavailable</html>",
                                         content_type="text/html"),
    }
    make = faults.get(recorder.mode)
    return make() if make else None


def success(request: web.Request, recorder: Recorder) -> web.Response:
    url = request.url.origin().with_path("/files/20251013_0.png")
    data = [] if recorder.mode == "empty" else [{"url": str(url)}]
    return web.json_response({"created": CREATED, "data": data,
                              "content_filter": [{"role": "assistant", "level": 3}]})


def make_app(recorder: Recorder) -> web.Application:
    async def generations(request: web.Request) -> web.Response:
        body = await record(recorder, request)
        authorized = request.headers.get("Authorization") == f"Bearer {recorder.api_key}"
        if not authorized or recorder.mode == "auth":
            return zai_error(401, "1002", "Invalid Authentication Token, please confirm the "
                                          "correct transmission of the Authentication Token")
        return validate(body) or fault(recorder) or success(request, recorder)

    async def files(request: web.Request) -> web.Response:
        recorder.requests.append(Received(request.method, request.path, dict(request.headers)))
        if request.match_info["name"] != "20251013_0.png":
            return web.Response(status=404, text="NoSuchKey")
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    app.router.add_routes([web.post(path, generations) for path in PATHS])
    app.router.add_get("/files/{name}", files)
    return app
