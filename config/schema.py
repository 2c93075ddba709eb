"""The config file's schema: strict msgspec Structs, so a typo in YAML is an error with a path."""
from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

PositiveFloat = Annotated[float, Meta(gt=0)]


class Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Config Structs: unknown keys are errors; subclasses repeat frozen=True for type checkers."""


Sha256Hex = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]


class ServerConfig(Strict, frozen=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    public_base_url: str | None = None
    max_request_bytes: Annotated[int, Meta(ge=1024)] = 64 * 1024 * 1024
    graceful_shutdown_s: Annotated[float, Meta(ge=0)] = 30.0
    log_prompts: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_images_per_request: Annotated[int, Meta(ge=1, le=16)] = 16
    stream_keepalive_s: PositiveFloat = 10.0  # SSE comment interval while a provider works
    header_timeout_s: PositiveFloat = 15.0  # a request's head must arrive whole within this
    body_timeout_s: PositiveFloat = 30.0  # longest pause between two pieces of a request body
    max_connections: Annotated[int, Meta(ge=1)] | None = None  # None: from the open-file limit
    # everything one request fetches and holds: its input images and the provider bodies
    request_budget_bytes: Annotated[int, Meta(ge=1024)] = 128 * 1024 * 1024
    admin_keys: list[Sha256Hex] = []  # key_sha256 of the keys that may read /status, /metrics


Positive = Annotated[int, Meta(ge=1)]
NonNegative = Annotated[float, Meta(ge=0)]


class ModelLimits(Strict, frozen=True):
    requests_per_minute: Positive | None = None
    images_per_minute: Positive | None = None  # counts n at admission
    concurrent_requests: Positive | None = None


class Limits(ModelLimits, frozen=True):
    models: dict[str, ModelLimits] = {}  # per public model, on top of the key's own


class Budget(Strict, frozen=True):
    """Spend caps over UTC calendar windows (a day from 00:00, a month from its 1st)."""

    usd_per_day: NonNegative | None = None
    usd_per_month: NonNegative | None = None
    images_per_day: Annotated[int, Meta(ge=0)] | None = None


class ApiKey(Strict, frozen=True):
    id: str
    key: str | None = None
    key_sha256: str | None = None
    models: list[str] | None = None
    limits: Limits | None = None  # None: auth.default_limits
    budget: Budget | None = None

    def __repr__(self) -> str:
        return f"ApiKey(id={self.id!r}, key=***)"


class AuthConfig(Strict, frozen=True):
    keys: list[ApiKey] = []
    default_limits: Limits | None = None  # keys without limits; all callers of an open gateway


class RedisSentinel(Strict, frozen=True):
    """A Sentinel-managed primary: the sentinels to ask, the name they know it by."""

    service: Annotated[str, Meta(min_length=1)]
    nodes: Annotated[list[str], Meta(min_length=1)]  # "host:port" of each sentinel
    password: str | None = None  # the sentinels' own (the primary's comes from redis_url)

    def __post_init__(self) -> None:
        for i, node in enumerate(self.nodes):
            host, _, port = node.rpartition(":")
            if not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
                raise ValueError(f"nodes[{i}]: expected \"host:port\", got {node!r}")

    def addresses(self) -> list[tuple[str, int]]:
        return [(h.strip("[]"), int(p)) for h, _, p in (n.rpartition(":") for n in self.nodes)]

    def __repr__(self) -> str:
        return f"RedisSentinel(service={self.service!r}, nodes={self.nodes!r}, password=***)"


class StateConfig(Strict, frozen=True):
    backend: Literal["memory", "redis"] = "memory"
    # a single server; with redis_cluster any one node; with redis_sentinel: db and password only
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False  # a Redis Cluster (each key id's state sits on one hash slot)
    redis_sentinel: RedisSentinel | None = None
    on_redis_error: Literal["open", "closed"] = "open"  # open: per-process limits; closed: 503

    def __post_init__(self) -> None:
        if self.redis_cluster and self.redis_sentinel is not None:
            raise ValueError("redis_cluster and redis_sentinel exclude each other (a Redis "
                             "Cluster fails over by itself)")
        if self.redis_cluster and self.redis_url.partition("://")[2].partition("/")[2] \
                not in ("", "0"):
            raise ValueError("a Redis Cluster has only database 0: end redis_url with /0")


PRESIGN_MAX_S = 604800  # SigV4: a presigned link lives at most seven days


class S3Config(Strict, frozen=True):
    """An S3-compatible bucket; empty credentials mean the standard AWS chain (environment,
    shared files, instance or task roles)."""

    bucket: str = ""
    prefix: str = "images/"
    region: str = "us-east-1"
    endpoint_url: str | None = None  # MinIO, R2, GCS's S3 API...; None or empty: AWS's own
    access_key_id: str = ""
    secret_access_key: str = ""
    presign: bool = True  # links straight to the bucket; false: signed links to the gateway

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("bucket: required with storage.backend s3")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ValueError("access_key_id and secret_access_key go together (both empty: "
                             "the standard AWS credential chain)")
        if self.prefix.startswith("/"):
            raise ValueError("prefix: a key prefix does not start with '/'")
        if self.endpoint_url and not self.endpoint_url.startswith(("http://", "https://")):
            raise ValueError("endpoint_url: expected an http:// or https:// URL")

    def __repr__(self) -> str:
        return (f"S3Config(bucket={self.bucket!r}, prefix={self.prefix!r}, "
                f"region={self.region!r}, endpoint_url={self.endpoint_url!r}, "
                f"access_key_id=***, secret_access_key=***, presign={self.presign})")


class StorageConfig(Strict, frozen=True):
    backend: Literal["filesystem", "redis", "s3"] = "filesystem"
    path: str = "./data/images"
    ttl_s: PositiveFloat = 3600.0
    signing_secret: str = ""
    s3: S3Config | None = None

    def __post_init__(self) -> None:
        if self.backend == "s3" and self.s3 is None:
            raise ValueError("s3: required with backend s3 (at least s3.bucket)")
        if self.backend == "s3":
            import importlib.util

            if importlib.util.find_spec("aiobotocore") is None:
                raise ValueError("backend: s3 needs the s3 extra: pip install 'imagegate[s3]'")
        if self.backend == "s3" and self.s3 is not None and self.s3.presign \
                and self.ttl_s > PRESIGN_MAX_S:
            raise ValueError(f"ttl_s: presigned links live at most {PRESIGN_MAX_S} s "
                             "(7 days); lower it or set s3.presign: false")

    def __repr__(self) -> str:
        return (f"StorageConfig(backend={self.backend!r}, path={self.path!r}, "
                f"ttl_s={self.ttl_s}, s3={self.s3!r})")


class IdempotencyConfig(Strict, frozen=True):
    ttl_s: PositiveFloat = 86400.0  # a finished answer is replayed this long
    lease_s: Annotated[float, Meta(ge=1)] = 30.0  # an in-flight marker lives this long unrenewed
    max_stored_bytes: Annotated[int, Meta(ge=0)] = 512 * 1024 * 1024  # memory: all; redis: one


class FetchConfig(Strict, frozen=True):
    max_bytes: Annotated[int, Meta(ge=1)] = 50 * 1024 * 1024
    timeout_s: PositiveFloat = 30.0
    allow_private_hosts: list[str] = []


class ProviderBase(Strict, tag_field="type", frozen=True, kw_only=True):
    timeout_s: PositiveFloat = 300.0
    connect_timeout_s: PositiveFloat = 10.0
    max_concurrency: Annotated[int, Meta(ge=1)] = 64
    headers: dict[str, str] = {}

    @property
    def type(self) -> str:
        """The `type:` the YAML gave (msgspec keeps it as the tag, not as a field)."""
        return str(self.__struct_config__.tag)


class _KeyedProvider(ProviderBase, frozen=True, kw_only=True):
    base_url: str
    api_key: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key=***)"


class OpenAIProvider(_KeyedProvider, tag="openai", frozen=True, kw_only=True):
    base_url: str = "https://api.openai.com/v1"


class ArkProvider(_KeyedProvider, tag="ark", frozen=True, kw_only=True):
    base_url: str = "https://ark.cn-beijing.volces.com/api/v3"


class OpenRouterProvider(_KeyedProvider, tag="openrouter", frozen=True, kw_only=True):
    base_url: str = "https://openrouter.ai/api/v1"


class GeminiProvider(_KeyedProvider, tag="gemini", frozen=True, kw_only=True):
    base_url: str = "https://generativelanguage.googleapis.com/v1beta"


class ZaiProvider(_KeyedProvider, tag="zai", frozen=True, kw_only=True):
    base_url: str = "https://open.bigmodel.cn/api/paas/v4"


class LocalProvider(ProviderBase, tag="local", frozen=True, kw_only=True):
    pass


Provider = (
    OpenAIProvider | ArkProvider | OpenRouterProvider | GeminiProvider | ZaiProvider | LocalProvider
)
PROVIDER_TYPES = ("openai", "ark", "openrouter", "gemini", "zai", "local")


class TokenPrice(Strict, frozen=True):
    """USD per million tokens, read from the provider's `usage`."""

    input: NonNegative | None = None  # every input token, when text and image cost the same
    input_text: NonNegative | None = None
    input_image: NonNegative | None = None
    output: NonNegative = 0.0


class Price(Strict, frozen=True):
    # flat, or keyed "SIZE/QUALITY", "SIZE", "*/QUALITY", "*" (the most specific match wins)
    per_image: NonNegative | dict[str, NonNegative] | None = None
    tokens: TokenPrice | None = None


class Fault(Strict, frozen=True, kw_only=True):
    """A `local` route failing on purpose, as that error from a real provider would."""

    every: Annotated[int, Meta(ge=1)] | None = None  # every Nth attempt fails
    rate: Annotated[float, Meta(ge=0, le=1)] | None = None  # or this share, drawn from `seed`
    seed: int = 0
    with_: Literal["upstream_unavailable", "upstream_rate_limited", "upstream_timeout",
                   "content_policy_violation", "no_image"] = msgspec.field(name="with")
    retry_after_s: Annotated[float, Meta(gt=0)] = 1.0  # sent with upstream_rate_limited


class Route(Strict, frozen=True):
    provider: str
    model: str | None = None  # defaults to the public model name
    priority: int = 0
    weight: Annotated[float, Meta(gt=0)] = 1.0
    watermark: bool = False  # Ark / Z.AI: ask for the provider's visible mark
    image_only: bool = False  # OpenRouter / Gemini: request only the image modality
    price: Price | None = None  # USD; None: unpriced (unknown, never free)
    latency_s: Annotated[float, Meta(ge=0)] | list[Annotated[float, Meta(ge=0)]] | None = None
    fail: Fault | None = None  # `local` routes only, with latency_s: a test double


class ModelConfig(Strict, frozen=True):
    routes: Annotated[list[Route], Meta(min_length=1)]
    aliases: list[str] = []
    defaults: dict[str, str | int | float | bool] = {}


class RoutingConfig(Strict, frozen=True):
    max_attempts: Annotated[int, Meta(ge=1)] = 3
    cooldown_s: Annotated[float, Meta(ge=0)] = 30.0


class Config(Strict, frozen=True):
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    state: StateConfig = StateConfig()
    storage: StorageConfig = StorageConfig()
    fetch: FetchConfig = FetchConfig()
    idempotency: IdempotencyConfig = IdempotencyConfig()
    providers: dict[str, Provider] = {}
    models: dict[str, ModelConfig] = {}
    routing: RoutingConfig = RoutingConfig()
