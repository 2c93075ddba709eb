"""What an attempt at one route gives back: the client's response and what it delivered."""
from __future__ import annotations

import msgspec
from aiohttp import web
from imagegate.config.api import Usage


class Answer(msgspec.Struct):
    response: web.StreamResponse
    images: int  # delivered to the client
    usage: Usage | None = None
    broken: bool = False  # failed after it had begun reaching the client
