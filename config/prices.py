"""Route prices: what one image or one answer costs in USD, as pure functions of the config."""
from __future__ import annotations

import re
from collections.abc import Iterable

from imagegate.config.api import Usage
from imagegate.config.schema import Price, Route

QUALITIES = frozenset({"auto", "low", "medium", "high", "standard", "hd"})
_SIZE = re.compile(r"[A-Za-z0-9.:x]+")  # "1024x1024", "2K", "16:9", "auto"
MICRO = 1_000_000  # spend is counted in micro-USD integers: no float drift over a month


def check_price(price: Price) -> str | None:
    """What is wrong with a route's `price:` (None when it is well-formed)."""
    if (price.per_image is None) == (price.tokens is None):
        return "give exactly one of per_image or tokens"
    if isinstance(price.per_image, dict):
        if not price.per_image:
            return "per_image: the table is empty"
        for key in price.per_image:
            problem = _check_key(key)
            if problem:
                return f"per_image: {key!r}: {problem}"
    tokens = price.tokens
    if tokens is not None:
        split = tokens.input_text is not None or tokens.input_image is not None
        if tokens.input is not None and split:
            return "tokens: give input, or input_text and input_image, not both"
        if tokens.input is None and not split and not tokens.output:
            return "tokens: no rate given"
    return None


def _check_key(key: str) -> str | None:
    size, _, quality = key.partition("/")
    if not _SIZE.fullmatch(size) and size != "*":
        return "expected SIZE/QUALITY, SIZE, */QUALITY or *"
    if "/" in key and quality not in QUALITIES:
        return f"unknown quality {quality!r} (one of: {', '.join(sorted(QUALITIES))})"
    return None


def image_price(price: Price | None, size: str | None, quality: str | None) -> float | None:
    """USD for one image of this size and quality; None when the route has no per-image price
    for it. Omitted size or quality match as `auto`."""
    if price is None or price.per_image is None:
        return None
    table = price.per_image
    if not isinstance(table, dict):
        return float(table)
    size, quality = size or "auto", quality or "auto"
    for key in (f"{size}/{quality}", size, f"*/{quality}", "*"):
        found = table.get(key)
        if found is not None:
            return float(found)
    return None


def token_cost(price: Price | None, usage: Usage | None) -> float | None:
    """USD for the tokens a provider reported. Without the text/image split of the input,
    every input token is charged at the higher of the two input rates (never under-billed)."""
    if price is None or price.tokens is None or usage is None:
        return None
    rates = price.tokens
    details = usage.input_tokens_details if isinstance(usage.input_tokens_details, dict) else {}
    if rates.input is not None:
        cost_in = usage.input_tokens * rates.input
    elif "text_tokens" in details or "image_tokens" in details:
        cost_in = (details.get("text_tokens", 0) * (rates.input_text or 0.0)
                   + details.get("image_tokens", 0) * (rates.input_image or 0.0))
    else:
        cost_in = usage.input_tokens * max(rates.input_text or 0.0, rates.input_image or 0.0)
    return (cost_in + usage.output_tokens * rates.output) / 1_000_000


def answer_cost(route: Route, images: int, usage: Usage | None, size: str | None,
                quality: str | None) -> float | None:
    """USD of a delivered answer: its images (failed ones cost nothing) or its tokens;
    None when unknown (unpriced route, no table entry, or no usage reported)."""
    price = route.price
    if price is None:
        return None
    if price.tokens is not None:
        return token_cost(price, usage)
    each = image_price(price, size, quality)
    return None if each is None else round(each * images, 6)


def admission_estimate(routes: Iterable[Route], n: int, size: str | None,
                       quality: str | None) -> float:
    """The most any route of the model would charge for `n` images at a known per-image
    price (0 when none has one: token-priced and unpriced costs are known only afterwards)."""
    prices = [image_price(r.price, size, quality) for r in routes]
    known = [p for p in prices if p is not None]
    return round(max(known) * n, 6) if known else 0.0


def to_micro(usd: float) -> int:
    return round(usd * MICRO)


def usd_text(usd: float) -> str:
    """A decimal string for headers: 0.167, 0.0416, 0 (never exponent notation)."""
    text = f"{usd:.6f}".rstrip("0").rstrip(".")
    return text or "0"
