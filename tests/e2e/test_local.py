"""The default config's `local` provider through the official SDK: generate, edit, url, errors."""
from __future__ import annotations

import base64
import io
from typing import Any

import openai
import pytest
from imagegate.config.loader import load_config
from PIL import Image, ImageChops, ImageStat

from tests.conftest import make_config
from tests.schemas import checked_sdk


@pytest.fixture
async def sdk(gateway: Any, tmp_path: Any) -> Any:
    client = await gateway(make_config(tmp_path=tmp_path))
    sdk = checked_sdk(str(client.make_url("/v1")), "x")
    sdk.gateway = client
    yield sdk
    await sdk.close()


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def png(size: tuple[int, int], color: tuple[int, ...], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, "PNG")
    return out.getvalue()


async def test_generate_n_size_and_formats(sdk: Any) -> None:
    result = await sdk.images.generate(model="local", prompt="a red kite", n=3, size="320x200",
                                       output_format="webp")
    images = [decode(d.b64_json) for d in result.data]
    assert [(im.format, im.size) for im in images] == [("WEBP", (320, 200))] * 3
    assert len({d.b64_json for d in result.data}) == 3
    again = await sdk.images.generate(model="local", prompt="a red kite", n=3, size="320x200",
                                      output_format="webp")
    assert [d.b64_json for d in again.data] == [d.b64_json for d in result.data]


async def test_url_response_is_a_signed_gateway_link(sdk: Any) -> None:
    result = await sdk.images.generate(model="local", prompt="kite", size="64x64",
                                       output_format="jpeg", response_format="url")
    url = result.data[0].url
    assert "/v1/images/files/" in url and "sig=" in url
    path = "/" + url.split("/", 3)[3]
    resp = await sdk.gateway.get(path)
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(await resp.read())).size == (64, 64)
    tampered = await sdk.gateway.get(path.replace("sig=", "sig=0"))
    assert tampered.status == 404


async def test_edit_changes_only_the_masked_area(sdk: Any) -> None:
    image = png((64, 64), (200, 30, 30))
    mask_im = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask_im.paste((0, 0, 0, 0), (0, 0, 32, 64))  # left half transparent: the area to edit
    mask = io.BytesIO()
    mask_im.save(mask, "PNG")
    result = await sdk.images.edit(model="local", prompt="paint it blue",
                                   image=("a.png", image, "image/png"),
                                   mask=("m.png", mask.getvalue(), "image/png"))
    out = decode(result.data[0].b64_json).convert("RGB")
    assert out.size == (64, 64)
    assert out.getpixel((48, 10)) == (200, 30, 30)  # outside the mask: unchanged
    assert any(out.getpixel((x, 10)) != (200, 30, 30) for x in range(32))


async def test_edit_with_several_images_and_json_data_urls(sdk: Any) -> None:
    a, b = png((40, 40), (10, 10, 10)), png((40, 40), (250, 250, 250))
    result = await sdk.images.edit(model="local", prompt="merge",
                                   image=[("a.png", a, "image/png"), ("b.png", b, "image/png")])
    assert decode(result.data[0].b64_json).size == (40, 40)
    url = "data:image/png;base64," + base64.b64encode(a).decode()
    body = await sdk.post("/images/edits", cast_to=object, body={
        "model": "local", "prompt": "p", "images": [{"image_url": url}], "n": 2})
    assert len(body["data"]) == 2


async def test_adapted_routes_refuse_what_they_cannot_do(sdk: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.images.generate(model="local", prompt="p", background="transparent",
                                  output_format="jpeg")
    assert info.value.param == "background"
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.post("/images/edits", cast_to=object, body={
            "model": "local", "prompt": "p", "images": [{"image_url": "data:image/png;base64,@@"}]})
    assert info.value.param == "images[0]"


async def test_default_config_and_default_model(gateway: Any) -> None:
    client = await gateway(load_config())
    resp = await client.post("/v1/images/generations", json={"prompt": "a red kite",
                                                             "size": "256x256"})
    assert resp.status == 200, await resp.text()
    assert decode((await resp.json())["data"][0]["b64_json"]).size == (256, 256)
    models = await (await client.get("/v1/models")).json()
    assert {m["id"] for m in models["data"]} == {"local", "gpt-image-1", "dall-e-2", "dall-e-3"}


async def test_stream_sends_partial_renders_before_each_completed_event(sdk: Any) -> None:
    stream = await sdk.images.generate(model="local", prompt="p", n=2, size="64x64", stream=True,
                                       partial_images=2)
    events = [event async for event in stream]
    kinds = ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.type for e in events] == kinds * 2
    assert [e.partial_image_index for e in events if e.type.endswith("partial_image")] == [
        0, 1, 0, 1]
    final = decode(events[2].b64_json).convert("RGB")
    assert final.size == (64, 64)
    # real renders of the same image, each finer than the one before: closer to the final
    errors = [sum(ImageStat.Stat(ImageChops.difference(decode(e.b64_json).convert("RGB"),
                                                       final)).sum) for e in events[:2]]
    assert errors[0] > errors[1] > 0
    assert events[2].size == "auto" and events[2].quality == "high"  # 64x64: not in the enum
    assert events[2].output_format == "png" and events[2].background == "opaque"
    assert events[-1].usage.output_tokens > 0 and events[-1].usage.input_tokens_details
    edit = await sdk.images.edit(model="local", prompt="p", stream=True,
                                 image=("a.png", png((16, 16), (1, 2, 3)), "image/png"))
    assert [e.type async for e in edit] == ["image_edit.completed"]


async def test_fields_after_the_files_count_on_adapted_routes(sdk: Any) -> None:
    from tests.e2e.test_openai_passthrough import multipart

    body, ctype = multipart([("model", None, b"local"), ("prompt", None, b"p"),
                             ("image", "a.png", png((24, 24), (5, 5, 5))), ("n", None, b"2"),
                             ("output_format", None, b"webp")])
    resp = await sdk.gateway.post("/v1/images/edits", data=body,
                                  headers={"Content-Type": ctype})
    data = (await resp.json())["data"]
    assert resp.status == 200 and len(data) == 2
    assert decode(data[0]["b64_json"]).format == "WEBP"
