"""Images and tokens counted from an OpenAI answer relayed in chunks, however it is split."""
from __future__ import annotations

import json
import random

import pytest
from imagegate.proxy.passthrough import Tally

USAGE = {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210,
         "input_tokens_details": {"image_tokens": 40, "text_tokens": 10}}
B64 = "QUJD" * 3000  # 12 KB: longer than the tail the tally keeps


def body(n: int) -> bytes:
    return json.dumps({"created": 1, "data": [{"b64_json": B64, "revised_prompt": 'a "url": x'}
                                              for _ in range(n)], "usage": USAGE}).encode()


def stream(n: int) -> bytes:
    events = [{"type": "image_generation.partial_image", "b64_json": B64}]
    events += [{"type": "image_generation.completed", "b64_json": B64,
                "usage": {**USAGE, "input_tokens": 5 + i}} for i in range(n)]
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def fed(data: bytes, events: bool, seed: int) -> Tally:
    rng, tally, at = random.Random(seed), Tally(events), 0
    while at < len(data):
        step = rng.choice([1, 3, 7, 64, 4095, 5000, 20000])
        tally.feed(data[at:at + step])
        at += step
    return tally


@pytest.mark.parametrize("seed", range(8))
def test_a_body_split_anywhere_counts_its_images_and_usage(seed: int) -> None:
    tally = fed(body(3), events=False, seed=seed)
    usage = tally.finish()
    assert tally.images == 3
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (50, 4160)


@pytest.mark.parametrize("seed", range(8))
def test_a_stream_counts_completed_events_and_adds_their_usage(seed: int) -> None:
    tally = fed(stream(2), events=True, seed=seed)
    usage = tally.finish()
    assert tally.images == 2  # the partial image is not one
    assert usage is not None and usage.input_tokens == 5 + 6
    assert usage.output_tokens == 2 * 4160
    assert usage.input_tokens_details == {"image_tokens": 80, "text_tokens": 20}


@pytest.mark.parametrize("seed", range(6))
def test_a_large_body_in_network_sized_chunks_counts_each_image_once(seed: int) -> None:
    """Megabytes of base64 in 64 KB chunks (most hold no quote at all), the image keys falling
    anywhere, a key split across two chunks included."""
    rng = random.Random(seed)
    images = [{"b64_json": "QUJD" * rng.randrange(1, 200_000)} for _ in range(4)]
    images.insert(2, {"url": "https://x/y.png", "revised_prompt": "r"})
    data = json.dumps({"created": 1, "data": images, "usage": USAGE}).encode()
    tally, at, size = Tally(False), 0, rng.choice([65536, 65535, 16384, 9])
    while at < len(data):
        tally.feed(data[at:at + size])
        at += size
    usage = tally.finish()
    assert tally.images == 5 and usage is not None and usage.total_tokens == 4210
