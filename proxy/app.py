"""The app factory: the middleware chain in its one fixed order, the routes, the lifecycle."""
from __future__ import annotations

from aiohttp import web
from imagegate.config.schema import Config
from imagegate.middlewares.auth import auth_middleware
from imagegate.middlewares.context import context_middleware, set_request_id_header
from imagegate.middlewares.errors import errors_middleware
from imagegate.middlewares.headers import enforce_safe_headers
from imagegate.middlewares.keys import CONFIG
from imagegate.middlewares.metrics import Metrics, metrics_middleware
from imagegate.middlewares.redact import configured_secrets, register
from imagegate.middlewares.rewrite import rewrite_middleware
from imagegate.proxy import handlers
from imagegate.proxy.gateway import GATEWAY, Gateway
from imagegate.proxy.routing import Router
from imagegate.proxy.storage import ImageStore
from prometheus_client import CollectorRegistry
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client.aiohttp import make_aiohttp_handler


def create_app(config: Config, *, registry: CollectorRegistry | None = None,
               router: Router | None = None, store: ImageStore | None = None,
               multiprocess: bool = False, rest_sync_s: float = 1.0) -> web.Application:
    registry = registry if registry is not None else CollectorRegistry()
    register(configured_secrets(config))  # scrubbed from every error body and log line
    metrics = Metrics(registry, multiprocess=multiprocess)
    gateway = Gateway(config, metrics, router, store, rest_sync_s)
    middlewares = [
        context_middleware(),
        metrics_middleware(metrics),
        errors_middleware(),  # inside context/metrics: they see every final status
        auth_middleware(config.auth),
        # rate limits take their place here, between auth and rewrite
        rewrite_middleware(config, gateway.models),
    ]
    app = web.Application(middlewares=middlewares,
                          client_max_size=config.server.max_request_bytes)
    app[CONFIG] = config
    app[GATEWAY] = gateway
    app.on_response_prepare.append(set_request_id_header)
    app.on_startup.append(_last_response_hook)
    app.cleanup_ctx.append(gateway.lifecycle)
    app.router.add_post("/v1/images/generations", handlers.generations)
    app.router.add_post("/v1/images/edits", handlers.edits)
    app.router.add_post("/v1/images/variations", handlers.variations)
    app.router.add_get("/v1/models", handlers.list_models)
    app.router.add_get("/v1/models/{model}", handlers.get_model)
    app.router.add_get("/v1/images/files/{name}", handlers.hosted_file)
    app.router.add_get("/metrics", make_aiohttp_handler(_exposed_registry(metrics, multiprocess)))
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    return app


async def _last_response_hook(app: web.Application) -> None:
    """The header safety net runs after every other on_response_prepare hook."""
    app.on_response_prepare.append(enforce_safe_headers)


def _exposed_registry(metrics: Metrics, multiprocess: bool) -> CollectorRegistry:
    """With several workers, /metrics sums every worker's files, not just this process."""
    if not multiprocess:
        return metrics.registry
    registry = CollectorRegistry()
    prom_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry
