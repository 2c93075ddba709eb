"""The app factory: the middleware chain in its one fixed order, the routes, the lifecycle."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from imagegate.config.schema import Config
from imagegate.middlewares.auth import auth_middleware
from imagegate.middlewares.body import body_middleware, expect_handler
from imagegate.middlewares.context import context_middleware, set_request_id_header
from imagegate.middlewares.errors import errors_middleware, shape_http_exceptions
from imagegate.middlewares.exactly_once import EXACTLY_ONCE, ExactlyOnce
from imagegate.middlewares.headers import enforce_safe_headers
from imagegate.middlewares.idempotency import idempotency_middleware
from imagegate.middlewares.keys import CONFIG
from imagegate.middlewares.limits import Limiter
from imagegate.middlewares.metrics import Metrics, metrics_middleware
from imagegate.middlewares.parse import parse_middleware
from imagegate.middlewares.plans import policies
from imagegate.middlewares.ratelimit import apply_usage_headers, ratelimit_middleware
from imagegate.middlewares.redact import configured_secrets, register
from imagegate.proxy import endpoints
from imagegate.proxy.drain import DRAIN, Drain
from imagegate.proxy.gateway import GATEWAY, Gateway
from imagegate.proxy.logs import info_line
from imagegate.proxy.reload import GENERATIONS, Generations, Middleware
from imagegate.proxy.routing import Router
from imagegate.proxy.status import StatusBoard
from imagegate.proxy.status_page import status_routes
from imagegate.proxy.storage import ImageStore
from prometheus_client import CollectorRegistry
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client.aiohttp import make_aiohttp_handler


def create_app(config: Config, *, registry: CollectorRegistry | None = None,
               router: Router | None = None, store: ImageStore | None = None,
               multiprocess: bool = False, rest_sync_s: float = 1.0,
               workers: int = 1, clock: Callable[[], float] = time.time
               ) -> web.Application:
    registry = registry if registry is not None else CollectorRegistry()
    register(configured_secrets(config))  # scrubbed from every error body and log line
    metrics = Metrics(registry, multiprocess=multiprocess)
    gateway = Gateway(config, metrics, router, store, rest_sync_s)
    # stored answers beside the hosted images when those go to a bucket
    once = ExactlyOnce(config, metrics, clock=clock, blobs=gateway.store.answer_blobs())
    # The order is fixed here and only here:
    # - context and metrics outermost, errors inside them: the access log and requests_total
    #   see every final status, errors included;
    # - auth before anything reads the body: an unknown key costs no parsing;
    # - parse (DESIGN's rewrite step) before the usage layers: rate limits count `n` and apply
    #   per-model overrides, and both are known only once the body's head is read and the
    #   model's aliases and defaults resolved; parse also checks the key's model allowlist;
    # - idempotency and rate limits then sit between parse and the handler, idempotency
    #   first, so a replayed answer consumes no limit; with no limit or budget configured the
    #   usage layer only prices answers (no admission, no shared state);
    # - drain refuses new requests once SIGTERM came; the generation middleware then runs the
    #   config-dependent rest of the chain (auth to rate limits) as built from the config the
    #   request started on. The limiter and the idempotency ledger live as long as the app, so
    #   a reload keeps the limits' counters and the keys' answers.
    limiter = Limiter(config.state, clock)

    def config_middlewares(config: Config, gateway: Gateway) -> list[Middleware]:
        return [
            auth_middleware(config.auth, config.server.admin_keys),
            parse_middleware(config, gateway.models),
            idempotency_middleware(config, once),  # before rate limits: a replay uses none
            ratelimit_middleware(config.auth, limiter if policies(config.auth) else None,
                                 metrics),
        ]

    generations = Generations(gateway, config_middlewares)
    drain = Drain()
    middlewares = [
        context_middleware(info_line),
        metrics_middleware(metrics),
        errors_middleware(),  # inside context/metrics: they see every final status
        drain.middleware(),
        body_middleware(config.server.max_request_bytes),  # 413 / 415 before any body is read
        generations.middleware(),  # then config_middlewares() of the request's generation
    ]
    app = web.Application(middlewares=middlewares,
                          client_max_size=config.server.max_request_bytes)
    app[CONFIG] = config
    app[GATEWAY] = gateway
    app[GENERATIONS] = generations
    app[DRAIN] = drain
    app[EXACTLY_ONCE] = once
    app.on_response_prepare.append(set_request_id_header)
    app.on_response_prepare.append(shape_http_exceptions)
    app.on_response_prepare.append(apply_usage_headers)
    app.on_response_prepare.append(drain.close_connections)
    app.on_startup.append(_last_response_hook)
    app.cleanup_ctx.append(gateway.lifecycle)
    app.cleanup_ctx.append(once.lifecycle)  # after the gateway's: detached runs end first
    app.cleanup_ctx.append(limiter.lifecycle)  # after the detached runs: they release slots
    exposed = _exposed_registry(metrics, multiprocess)
    board = StatusBoard(lambda: generations.current.gateway, exposed, workers=workers)
    app.cleanup_ctx.append(board.run)
    _add_routes(app, expect_handler(config.server.max_request_bytes),
                [web.get("/metrics", make_aiohttp_handler(exposed)), *status_routes(board)])
    return app


def _add_routes(app: web.Application, expect: Any, extra: list[web.RouteDef]) -> None:
    for path in ("generations", "edits", "variations"):
        app.router.add_post(f"/v1/images/{path}", endpoints.images, expect_handler=expect)
    app.router.add_get("/v1/models", endpoints.list_models, expect_handler=expect)
    app.router.add_get("/v1/models/{model}", endpoints.get_model, expect_handler=expect)
    app.router.add_get("/v1/images/files/{name}", endpoints.hosted_file, expect_handler=expect)
    for route in extra:  # /metrics, /status, /status.json
        app.router.add_route(route.method, route.path, route.handler, expect_handler=expect)
    app.router.add_get("/healthz", endpoints.healthz, expect_handler=expect)
    app.router.add_get("/readyz", endpoints.readyz, expect_handler=expect)


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
