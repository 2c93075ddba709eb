"""Safe downloads of image URLs: http(s) only, public addresses only, size cap, timeout."""
from __future__ import annotations

import base64
import binascii
import ipaddress
import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from imagegate.config.errors import GatewayError
from imagegate.config.images import InputImage, sniff_mime
from imagegate.config.schema import FetchConfig
from imagegate.proxy.budget import Budget
from yarl import URL

MAX_REDIRECTS = 3
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class _Policy:
    def __init__(self, allow: list[str]) -> None:
        self.hosts: set[str] = set()
        self.networks: list[Network] = []
        for item in allow:
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.hosts.add(item.lower())

    def allows(self, host: str, ip: str) -> bool:
        address = ipaddress.ip_address(ip.split("%")[0])
        if _is_public(address) or host.lower() in self.hosts:
            return True
        return any(address in net for net in self.networks)


class SafeResolver(AbstractResolver):
    """Resolves, then refuses private answers: the check holds at connect time (no rebinding)."""

    def __init__(self, policy: _Policy) -> None:
        self.policy = policy
        self.inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        allowed = [r for r in results if self.policy.allows(host, r["host"])]
        if not allowed:
            raise OSError(f"{host} resolves only to non-public addresses")  # aiohttp wraps it
        return allowed

    async def close(self) -> None:
        await self.inner.close()


def _parse(raw: str, param: str) -> URL:
    try:
        url = URL(raw)
        url.port  # noqa: B018 (an out-of-range port raises only when read)
    except ValueError:
        raise unsafe(param, "is not a valid URL") from None
    return url


def unsafe(param: str, why: str) -> GatewayError:
    return GatewayError("invalid_value", f"The image URL in '{param}' {why}.", param=param)


class Fetcher:
    def __init__(self, config: FetchConfig) -> None:
        self.config = config
        self.policy = _Policy(config.allow_private_hosts)
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(resolver=SafeResolver(self.policy), limit=64)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.config.timeout_s)
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def _check(self, url: URL, param: str) -> None:
        if url.scheme not in ("http", "https") or not url.host:
            raise unsafe(param, "must be an http(s) URL or a data URL")
        try:
            ip = ipaddress.ip_address(url.host)
        except ValueError:
            return  # a name: SafeResolver checks what it resolves to
        if not self.policy.allows(url.host, str(ip)):
            raise unsafe(param, "points at a private, loopback or link-local address")

    async def fetch(self, raw_url: str, param: str, budget: Budget | None = None) -> bytes:
        assert self.session is not None
        url = _parse(raw_url, param)
        for _ in range(MAX_REDIRECTS + 1):
            self._check(url, param)
            try:
                async with self.session.get(url, allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "location" in resp.headers:
                        url = url.join(_parse(resp.headers["location"], param))
                        continue
                    if resp.status != 200:
                        raise unsafe(param, f"could not be downloaded (HTTP {resp.status})")
                    return await self._read(resp, param, budget)
            except aiohttp.ClientConnectorError:
                raise unsafe(param, "could not be reached or is not a public address") from None
            except (aiohttp.ClientError, TimeoutError):
                raise unsafe(param, "could not be downloaded") from None
        raise unsafe(param, "redirects too many times")

    async def _read(self, resp: aiohttp.ClientResponse, param: str,
                    budget: Budget | None = None) -> bytes:
        limit = self.config.max_bytes
        if budget is not None and resp.content_length is not None:  # held before it is read
            budget.take(min(resp.content_length, limit + 1), f"the image in '{param}'")
            budget = None
        if resp.content_length is not None and resp.content_length > limit:
            raise unsafe(param, f"is larger than {limit} bytes")
        chunks, total = [], 0
        async for chunk in resp.content.iter_chunked(256 * 1024):
            total += len(chunk)
            if budget is not None:
                budget.take(len(chunk), f"the image in '{param}'")
            if total > limit:
                raise unsafe(param, f"is larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def load_image(self, url: str, param: str, budget: Budget | None = None
                         ) -> InputImage:
        """A data URL or a safe http(s) download, checked to be a real image."""
        if url.startswith("data:"):
            if budget is not None:  # decoded: 3/4 of its text, on top of the body's own bytes
                budget.take(len(url) * 3 // 4, f"the image in '{param}'")
            data = decode_data_url(url, param)
        else:
            data = await self.fetch(url, param, budget)
        mime = sniff_mime(data[:16])
        if not data or mime not in ("image/png", "image/jpeg", "image/webp"):
            raise GatewayError("invalid_value", f"'{param}' is not a PNG, JPEG or WebP image.",
                               param=param)
        return InputImage(data, mime, param)


def decode_data_url(url: str, param: str) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise GatewayError("invalid_value", f"'{param}' is not a base64 data URL.", param=param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise GatewayError("invalid_value", f"'{param}' has invalid base64 data.",
                           param=param) from None


