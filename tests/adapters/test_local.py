"""The offline `local` provider: determinism, sizes, formats, transparency and masked edits."""
from __future__ import annotations

import base64
import io
import random

import pytest
from imagegate.adapters import local
from imagegate.adapters.base import ImageRequest, ProviderResult
from imagegate.config.errors import GatewayError
from imagegate.config.images import InputImage
from PIL import Image, ImageChops

INPUT_SIZE = (64, 48)
BOX = (16, 8, 40, 32)  # the mask's transparent area, in input pixels


def make_request(**fields: object) -> ImageRequest:
    fields.setdefault("prompt", "a red fox in the snow")
    fields.setdefault("operation", "generate")
    return ImageRequest(model="local-test", **fields)  # type: ignore[arg-type]


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def input_image() -> InputImage:
    img = Image.linear_gradient("L").resize(INPUT_SIZE).convert("RGB")
    return InputImage(data=png(img), mime="image/png")


def mask_image(scale: int = 1) -> InputImage:
    mask = Image.new("RGBA", (INPUT_SIZE[0] * scale, INPUT_SIZE[1] * scale), (255, 255, 255, 255))
    mask.paste((0, 0, 0, 0), tuple(v * scale for v in BOX))
    return InputImage(data=png(mask), mime="image/png")


def raw(result: ProviderResult, index: int = 0) -> bytes:
    b64 = result.images[index].b64_json
    assert b64 is not None
    return base64.b64decode(b64)


def decoded(result: ProviderResult, index: int = 0) -> Image.Image:
    img = Image.open(io.BytesIO(raw(result, index)))
    img.load()
    return img


def changed_pixels(a: Image.Image, b: Image.Image) -> int:
    diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).convert("L")
    return diff.size[0] * diff.size[1] - diff.tobytes().count(0)


def raises(req: ImageRequest) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        local.render(req)
    assert info.value.code == "invalid_value" and info.value.status == 400
    return info.value


# --- generation -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_same_request_gives_same_bytes(fmt: str) -> None:
    req = make_request(size="128x96", seed=7, output_format=fmt)
    first, second = local.render(req), local.render(make_request(size="128x96", seed=7,
                                                                 output_format=fmt))
    assert raw(first) == raw(second)
    assert first.created == 0 and len(first.images) == 1


@pytest.mark.parametrize("change", [{"seed": 8}, {"prompt": "a blue whale"}])
def test_seed_and_prompt_change_the_image(change: dict[str, object]) -> None:
    base = local.render(make_request(size="128x96", seed=7))
    other = local.render(make_request(**{"size": "128x96", "seed": 7, **change}))
    assert changed_pixels(decoded(base), decoded(other)) > 0


def test_n_images_are_distinct() -> None:
    result = local.render(make_request(size="64x64", n=4))
    assert len(result.images) == 4
    assert len({raw(result, i) for i in range(4)}) == 4


@pytest.mark.parametrize("fmt, pil_format, mime", [
    ("png", "PNG", "image/png"), ("jpeg", "JPEG", "image/jpeg"), ("webp", "WEBP", "image/webp"),
])
@pytest.mark.parametrize("size, expected", [("200x120", (200, 120)), ("1x1", (1, 1)),
                                            ("auto", (1024, 1024)), (None, (1024, 1024))])
def test_size_and_format_are_honoured(fmt: str, pil_format: str, mime: str, size: str | None,
                                      expected: tuple[int, int]) -> None:
    result = local.render(make_request(size=size, output_format=fmt))
    img = decoded(result)
    assert (img.format, img.size, result.images[0].mime) == (pil_format, expected, mime)


def test_output_compression_is_jpeg_quality() -> None:
    low = local.render(make_request(size="256x256", output_format="jpeg", output_compression=10))
    default = local.render(make_request(size="256x256", output_format="jpeg"))
    assert len(raw(low)) < len(raw(default))


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_transparent_background_has_clear_pixels(fmt: str) -> None:
    req = make_request(size="128x128", background="transparent", output_format=fmt)
    alpha = decoded(local.render(req)).convert("RGBA").getchannel("A")
    assert alpha.getextrema() == (0, 255)  # clear background, opaque shapes


def test_opaque_background_by_default() -> None:
    img = decoded(local.render(make_request(size="128x128")))
    assert img.mode == "RGB"


def test_transparent_jpeg_is_rejected() -> None:
    req = make_request(background="transparent", output_format="jpeg")
    assert raises(req).param == "background"


@pytest.mark.parametrize("size", ["4097x1024", "1024x5000", "big", "0x10", "", "1024"])
def test_invalid_size_is_rejected(size: str) -> None:
    assert raises(make_request(size=size)).param == "size"


# --- edits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1, 2])  # a mask of another size is resized (NEAREST)
def test_edit_changes_only_the_masked_area(scale: int) -> None:
    image = input_image()
    req = make_request(operation="edit", images=[image], mask=mask_image(scale))
    result = local.render(req)
    out, original = decoded(result), Image.open(io.BytesIO(image.data))
    assert out.size == INPUT_SIZE
    inside = changed_pixels(out.crop(BOX), original.crop(BOX))
    assert inside > 0.9 * (BOX[2] - BOX[0]) * (BOX[3] - BOX[1])
    outside_out, outside_original = out.convert("RGB"), original.convert("RGB")
    outside_out.paste((0, 0, 0), BOX)
    outside_original.paste((0, 0, 0), BOX)
    assert changed_pixels(outside_out, outside_original) == 0
    assert raw(local.render(req)) == raw(result)


def test_edit_without_mask_changes_the_whole_image() -> None:
    image = input_image()
    out = decoded(local.render(make_request(operation="edit", images=[image])))
    original = Image.open(io.BytesIO(image.data))
    assert out.size == INPUT_SIZE
    assert changed_pixels(out, original) > 0.9 * INPUT_SIZE[0] * INPUT_SIZE[1]


def test_edit_size_resizes_the_result() -> None:
    req = make_request(operation="edit", images=[input_image()], size="32x32")
    assert decoded(local.render(req)).size == (32, 32)


def test_extra_input_images_show_as_thumbnails(monkeypatch: pytest.MonkeyPatch) -> None:
    # Inputs also seed the art; pin the RNG so only the pasted thumbnail can differ.
    monkeypatch.setattr(local, "_rng", lambda req, index, inputs: random.Random(0))
    single = decoded(local.render(make_request(operation="edit", images=[input_image()])))
    white = InputImage(data=png(Image.new("RGB", (20, 20), "white")), mime="image/png")
    double = decoded(local.render(make_request(operation="edit", images=[input_image(), white])))
    thumb = (0, 0, 12, 12)  # min(64, 48) // 4: the top-left tile
    assert changed_pixels(single.crop(thumb), double.crop(thumb)) == 12 * 12
    single.paste((0, 0, 0), thumb)
    double.paste((0, 0, 0), thumb)
    assert changed_pixels(single, double) == 0


def test_transparent_edit_clears_part_of_the_masked_area() -> None:
    req = make_request(operation="edit", images=[input_image()], mask=mask_image(),
                       background="transparent")
    alpha = decoded(local.render(req)).getchannel("A")
    assert alpha.crop(BOX).getextrema()[0] == 0
    alpha.paste(255, BOX)
    assert alpha.getextrema() == (255, 255)


@pytest.mark.parametrize("field, param", [("images", "image"), ("mask", "mask")])
def test_undecodable_input_is_rejected(field: str, param: str) -> None:
    junk = InputImage(data=b"definitely not an image", mime="image/png")
    if field == "images":
        req = make_request(operation="edit", images=[junk])
    else:
        req = make_request(operation="edit", images=[input_image()], mask=junk)
    assert raises(req).param == param


def test_mask_without_alpha_is_rejected() -> None:
    opaque = InputImage(data=png(Image.new("RGB", INPUT_SIZE, "white")), mime="image/png")
    req = make_request(operation="edit", images=[input_image()], mask=opaque)
    assert raises(req).param == "mask"


def test_edit_without_images_is_rejected() -> None:
    assert raises(make_request(operation="edit")).param == "image"


def test_huge_input_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "MAX_INPUT_PIXELS", INPUT_SIZE[0] * INPUT_SIZE[1] - 1)
    error = raises(make_request(operation="edit", images=[input_image()]))
    assert error.param == "image" and "megapixels" in error.message
