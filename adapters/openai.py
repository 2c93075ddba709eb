"""OpenAI: native, so requests are forwarded as bytes (proxy/passthrough.py), never re-encoded."""
from __future__ import annotations

from imagegate.adapters.base import Adapter, Capabilities

CAPABILITIES = Capabilities(generate=True, edit=True, mask=True, images_per_call=10)
ADAPTER = Adapter(type="openai", capabilities=CAPABILITIES, passthrough=True)

GPT_IMAGE_PREFIXES = ("gpt-image", "chatgpt-image")


def is_gpt_image_model(model: str) -> bool:
    """GPT image models answer base64 only and refuse `response_format` (dall-e take it)."""
    return model.startswith(GPT_IMAGE_PREFIXES)
