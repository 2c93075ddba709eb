"""One typed job per kind of images request: what the dispatch loop needs to know of it (public
model, stream flag, event kind, whether its body can still be sent again) and the two things it
can do at a route: adapt itself into an `ImageRequest`, or forward itself to an OpenAI route."""
from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Literal

import msgspec
from aiohttp import web
from imagegate.adapters.base import ImageRequest, Operation
from imagegate.config.api import ImageEditForm, ImageEditJSONRequest, ImageURL
from imagegate.config.errors import GatewayError
from imagegate.config.images import InputImage
from imagegate.middlewares.forms import FileCheck, Form, collect_files
from imagegate.middlewares.keys import ParsedRequest, record_of
from imagegate.middlewares.parse import apply_defaults, parse_form_fields
from imagegate.proxy import passthrough
from imagegate.proxy.answer import Answer
from imagegate.proxy.budget import BODY_BYTES_PER_INPUT_BYTE, BUDGET, Budget
from imagegate.proxy.fallback import Unsuitable
from imagegate.proxy.gateway import Gateway
from imagegate.proxy.replay import Tee
from imagegate.proxy.routing import RouteState

EventKind = Literal["image_generation", "image_edit"]
_raw_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])


def unknown_fields(names: Any, known: Any) -> tuple[str, ...]:
    """Request fields outside the OpenAI schema: forwarded as sent to OpenAI, named as dropped
    elsewhere (never silently lost)."""
    return tuple(sorted(set(names) - set(known)))


def image_request(op: Operation, body: Any, route: RouteState, images: list[InputImage],
                  mask: InputImage | None, unknown: tuple[str, ...] = ()) -> ImageRequest:
    r = route.route
    return ImageRequest(
        operation=op, model=route.model, prompt=body.prompt, n=body.n or 1, size=body.size,
        quality=body.quality, response_format=body.response_format or "b64_json",
        output_format=body.output_format, output_compression=body.output_compression,
        background=body.background, style=getattr(body, "style", None),
        moderation=body.moderation, input_fidelity=getattr(body, "input_fidelity", None),
        user=body.user, seed=body.seed, stream=bool(body.stream),
        partial_images=body.partial_images, images=images, mask=mask,
        watermark=r.watermark, image_only=r.image_only, unknown=unknown,
    )


class Job:
    """What every job shares; subclasses say how to adapt and forward."""

    kind: EventKind = "image_generation"
    path = "/images/generations"

    def __init__(self, gw: Gateway, request: web.Request, parsed: ParsedRequest) -> None:
        self.gw, self.request, self.parsed = gw, request, parsed
        self.public_model = parsed.public_model
        self.stream = parsed.stream
        self.budget = request[BUDGET] = Budget(gw.config.server.request_budget_bytes,
                                               record_of(request))

    @property
    def replayable(self) -> bool:
        """Whether the body can still be sent to another route."""
        return True

    async def adapt(self, route: RouteState) -> ImageRequest:
        raise NotImplementedError

    async def forward(self, route: RouteState, headers: Mapping[str, str]) -> Answer:
        """Sends the request to an OpenAI route; `headers` go on the client's answer."""
        raise NotImplementedError


class GenerationJob(Job):
    async def adapt(self, route: RouteState) -> ImageRequest:
        body = self.parsed.body
        unknown = _unknown_json(self.parsed)
        return image_request("generate", body, route, [], None, unknown)

    async def forward(self, route: RouteState, headers: Mapping[str, str]) -> Answer:
        return await passthrough.forward_json(self.gw, self.request, route, self.parsed,
                                              self.path, headers)


def _unknown_json(parsed: ParsedRequest) -> tuple[str, ...]:
    assert parsed.raw is not None
    return unknown_fields(_raw_fields.decode(parsed.raw), type(parsed.body).__struct_fields__)


class JsonEditJob(Job):
    """A JSON edit: its image URLs are read once (data URLs decoded, http(s) fetched safely)
    when the first adapted route needs them; OpenAI routes get the JSON as sent and read the
    URLs (and file_ids) themselves."""

    kind: EventKind = "image_edit"
    path = "/images/edits"

    def __init__(self, gw: Gateway, request: web.Request, parsed: ParsedRequest) -> None:
        super().__init__(gw, request, parsed)
        body: ImageEditJSONRequest = parsed.body
        most = gw.config.server.max_images_per_request
        if len(body.images) > most:
            raise GatewayError("invalid_value", f"Too many images: at most {most} may be sent.",
                               param="images")
        self._loaded: tuple[list[InputImage], InputImage | None] | None = None

    async def _load(self) -> tuple[list[InputImage], InputImage | None]:
        if self._loaded is None:
            body: ImageEditJSONRequest = self.parsed.body
            try:
                refs = [(_url(ref, f"images[{i}]"), f"images[{i}]")
                        for i, ref in enumerate(body.images)]
                if body.mask is not None:
                    refs.append((_url(body.mask, "mask"), "mask"))
                found = await self._fetch_all(refs)
            except GatewayError as error:  # an OpenAI route later in the plan reads them itself
                if error.code != "invalid_value":
                    raise
                raise Unsuitable(error) from None
            mask = found.pop() if body.mask is not None else None
            self._loaded = found, mask
        return self._loaded

    async def _fetch_all(self, refs: list[tuple[str, str]]) -> list[InputImage]:
        """All at once, within the request's budget; the first failure cancels the others
        (no download outlives the 400 it caused)."""
        fetch = self.gw.fetcher.load_image
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(fetch(u, p, self.budget)) for u, p in refs]
        except BaseExceptionGroup as failed:
            first = failed.exceptions[0]
            raise first from None
        return [t.result() for t in tasks]

    async def adapt(self, route: RouteState) -> ImageRequest:
        images, mask = await self._load()
        return image_request("edit", self.parsed.body, route, images, mask,
                             _unknown_json(self.parsed))

    async def forward(self, route: RouteState, headers: Mapping[str, str]) -> Answer:
        return await passthrough.forward_json(self.gw, self.request, route, self.parsed,
                                              self.path, headers)


def _url(ref: ImageURL, param: str) -> str:
    if not ref.image_url:
        raise GatewayError("invalid_value", f"'{param}.image_url' is required (file_id works "
                           "only on OpenAI routes).", param=f"{param}.image_url")
    return ref.image_url


class MultipartEditJob(Job):
    """A multipart edit: streamed part by part to an OpenAI route as it arrives (and copied to a
    spool file on disk as it passes, so a failed attempt can be replayed to the next route of
    any type), or read into memory once for adapters (and then re-sent to any route)."""

    kind: EventKind = "image_edit"
    path = "/images/edits"
    operation: Operation | None = "edit"

    def __init__(self, gw: Gateway, request: web.Request, parsed: ParsedRequest) -> None:
        super().__init__(gw, request, parsed)
        assert parsed.form is not None
        self.form: Form = parsed.form
        self.fields: ImageEditForm = parsed.body
        self.check = FileCheck(gw.config.server.max_images_per_request)
        self.all_fields = dict(self.form.fields)
        self._collected: tuple[list[InputImage], InputImage | None] | None = None
        self._tee: Tee | None = None

    @property
    def replayable(self) -> bool:
        return self._collected is not None or self.form.unread or self._tee is not None

    async def _rewind(self) -> None:
        """After an attempt that streamed the body: the rest of it onto the spool, the form
        reading from the spool's start, its files checked afresh."""
        if not self.form.unread and self._tee is not None:
            await self._tee.rewind()
            self.check = FileCheck(self.gw.config.server.max_images_per_request)

    async def _collect(self) -> tuple[list[InputImage], InputImage | None]:
        if self._collected is None:  # read into memory once: adapted routes can be retried
            await self._rewind()
            length = self.request.content_length
            if length is not None:  # refused before a byte of the files is read
                self.budget.check(int(length * (1 + BODY_BYTES_PER_INPUT_BYTE)),
                                  "its files and the provider requests built from them")
            images, mask, late = await collect_files(self.form, self.check)
            self.budget.take(sum(len(i.data) for i in images) + (len(mask.data) if mask else 0),
                             "its files")
            self._collected = images, mask
            self.all_fields.update(late)
            if late:  # fields sent after the files count too
                defaults = self.parsed.model_config.defaults
                self.fields, _ = apply_defaults(parse_form_fields(self.all_fields), defaults)
        return self._collected

    async def adapt(self, route: RouteState) -> ImageRequest:
        if self.operation is None:
            raise Unsuitable(GatewayError("invalid_value", f"The model '{self.public_model}' "
                                          "does not support variations.", param="model"))
        images, mask = await self._collect()
        unknown = unknown_fields(self.all_fields, ImageEditForm.__struct_fields__)
        return image_request(self.operation, self.fields, route, images, mask, unknown)

    async def forward(self, route: RouteState, headers: Mapping[str, str]) -> Answer:
        filled = {k: str(v) for k, v in self.parsed.filled.items()}
        if self._collected is None:
            await self._rewind()
        if self.form.unread:
            if self._tee is None:
                self._tee = Tee(self.form)
            return await passthrough.forward_form(self.gw, self.request, route, self.form,
                                                  self.check, self.path, filled, self.fields,
                                                  headers)
        if self._collected is None:
            raise Unsuitable()  # (unreachable: a streamed body is spooled and rewound)
        return await passthrough.forward_rebuilt(self.gw, self.request, route, self.path,
                                                 {**self.all_fields, **filled},
                                                 *self._collected, self.fields, headers)


class VariationJob(MultipartEditJob):
    path = "/images/variations"
    operation = None  # OpenAI routes only


JOBS: dict[str, type[Job]] = {"generations": GenerationJob, "variations": VariationJob}


def job_for(gw: Gateway, request: web.Request, parsed: ParsedRequest) -> Job:
    if parsed.endpoint == "edits":
        kind: type[Job] = JsonEditJob if parsed.form is None else MultipartEditJob
        return kind(gw, request, parsed)
    return JOBS[parsed.endpoint](gw, request, parsed)
