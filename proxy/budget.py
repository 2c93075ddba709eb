"""A request's byte budget: everything it fetches and holds (its input images, the provider
bodies made from them) counted together, refused with 413 before it is allocated."""
from __future__ import annotations

from aiohttp import web
from imagegate.config.errors import GatewayError
from imagegate.middlewares.keys import Record

# what a provider body holds per input byte while it is built: the base64 text and the JSON
# bytes it is encoded into (4/3 each)
BODY_BYTES_PER_INPUT_BYTE = 8 / 3


class Budget:
    """`record`: the request's, whose held_bytes tells the context middleware that the request
    held enough to collect its cyclic garbage at once (middlewares/context.py)."""

    def __init__(self, limit: int, record: Record | None = None) -> None:
        self.limit, self.used = limit, 0
        self.record = record if record is not None else Record()

    def take(self, size: int, what: str) -> None:
        """Holds `size` more bytes for the rest of the request, or refuses it (a refused take
        counts too: what was read before it is garbage now, and large)."""
        self.record.held_bytes = self.used + size
        self.check(size, what)
        self.used += size

    def check(self, size: int, what: str) -> None:
        """Refuses when `size` more bytes would not fit (without holding them)."""
        if self.used + size > self.limit:
            raise GatewayError(
                "request_too_large", f"This request needs more than the {self.limit} bytes "
                f"one request may hold ({what}); send fewer or smaller images.")

    def check_bodies(self, input_bytes: int, bodies: int) -> None:
        """The provider bodies an adapted attempt is about to build, each holding the input
        images as base64 (bodies alike are built once and shared by the n calls)."""
        self.check(int(input_bytes * BODY_BYTES_PER_INPUT_BYTE) * bodies,
                   "the provider requests built from its images")


BUDGET = web.RequestKey("budget", Budget)  # set by the request's job
