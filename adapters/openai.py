"""OpenAI: native, so requests are forwarded as bytes (proxy/passthrough.py), never re-encoded."""
from __future__ import annotations

import re
from typing import Final

from imagegate.adapters.base import Adapter, Capabilities

CAPABILITIES = Capabilities(generate=True, edit=True, mask=True, images_per_call=10)
ADAPTER = Adapter(type="openai", capabilities=CAPABILITIES, passthrough=True)
# The GPT image models: gpt-image-1, -1-mini, -1.5, gpt-image-2, gpt-image-2-2026-04-21,
# gpt-image-2.5-*, and chatgpt-image-latest. They answer base64 only and refuse
# `response_format`, so the gateway keeps that field to itself and hosts `url` answers.
# DALL·E 2/3 (shut down 2026-05-12) and anything else are not.
_GPT_IMAGE: Final = re.compile(r"(?:gpt-image|chatgpt-image)(?:-.*)?", re.IGNORECASE)


def is_gpt_image_model(model: str) -> bool:
    """Whether an OpenAI model id (the route's, after aliases) is a GPT image model."""
    return _GPT_IMAGE.fullmatch(model.removeprefix("openai/")) is not None
