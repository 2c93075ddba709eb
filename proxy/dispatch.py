"""One images request answered: its route plan, the fallback loop over it (passthrough to OpenAI
routes, adaptation elsewhere), and the outcome recorded in one place for logs and metrics."""
from __future__ import annotations

from aiohttp import web
from imagegate.adapters.base import ImageRequest
from imagegate.config.api import ImagesResponse
from imagegate.config.errors import GatewayError
from imagegate.middlewares.keys import Outcome, record_of
from imagegate.proxy import adapted, sse
from imagegate.proxy.adapted import Produced
from imagegate.proxy.answer import Answer
from imagegate.proxy.fallback import Served, Unsuitable, try_routes
from imagegate.proxy.gateway import Gateway
from imagegate.proxy.jobs import Job
from imagegate.proxy.routing import RouteState


async def dispatch(gw: Gateway, job: Job) -> web.StreamResponse:
    """Routes one job: OpenAI routes forward, others adapt. A stream whose first route is
    adapted keeps falling back over adapted routes while keep-alives flow."""
    plan = gw.router.plan(job.public_model)
    refused: Unsuitable | None = None
    while job.stream and plan and not gw.upstream.providers[plan[0].provider].adapter.passthrough:
        try:
            template = await job.adapt(plan[0])
        except Unsuitable as skip:  # as without `stream`: the next route may take it
            refused = refused or skip
            plan = plan[1:]
            continue
        return await _stream_adapted(gw, job, plan, template)
    if not plan and refused is not None:
        raise refused.error or GatewayError("upstream_unavailable", "No route of this model "
                                            "can serve this request.")

    tries = 0

    async def attempt(route: RouteState) -> Answer:
        nonlocal tries
        if gw.upstream.providers[route.provider].adapter.passthrough:
            tries += 1
            return await job.forward(route, answered_by(route, tries))
        req = await job.adapt(route)
        tries += 1
        return await adapted.answer(gw, job.request, route, req, answered_by(route, tries))

    served = await try_routes(plan, attempt, gw.router, replayable=lambda: job.replayable,
                              on_rest=gw.share_rest, on_retry=gw.count_retry)
    answer = served.result
    _record(gw, job, served.route, served.attempts, answer.images, answer)
    return answer.response


async def _stream_adapted(gw: Gateway, job: Job, plan: list[RouteState],
                          template: ImageRequest) -> web.StreamResponse:
    headers: dict[str, str] = {}

    async def attempt(route: RouteState) -> Produced:
        return await adapted.attempt_streamed(gw, job.request, route, await job.adapt(route),
                                              headers)

    work = try_routes(plan, attempt, gw.router, replayable=lambda: job.replayable,
                      on_rest=gw.share_rest, on_retry=gw.count_retry)
    streamed = await sse.stream_images(job.request, work, _parts, headers, job.kind, template,
                                       gw.config.server.stream_keepalive_s,
                                       partials=lambda s: s.result.partials)
    served = streamed.result
    if served is not None:
        _record(gw, job, served.route, served.attempts, served.result.images, served.result)
    return streamed.response


def _parts(served: Served[RouteState, Produced]) -> tuple[ImagesResponse, int, dict[str, str]]:
    return served.result.body, served.result.failed, answered_by(served.route, served.attempts)


def answered_by(route: RouteState, attempts: int) -> dict[str, str]:
    """Headers that tell the client who served it (the configured provider name)."""
    return {"x-imagegate-provider": route.provider, "x-imagegate-attempts": str(attempts)}


def _record(gw: Gateway, job: Job, route: RouteState, attempts: int, images: int,
            answered: Answer | Produced) -> None:
    """The one place an answered request's outcome is written."""
    body = job.parsed.body
    outcome = Outcome(provider=route.provider, route=route.route, provider_model=route.model,
                      images=images, usage=answered.usage, size=body.size,
                      quality=body.quality, attempts=attempts)
    record_of(job.request).outcome = outcome
    if images:
        gw.count_images(job.public_model, route.provider, images, answered.usage)
