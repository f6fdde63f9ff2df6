"""The REST API: `POST /api/generate`, `/api/edit` (img2img), `/api/inpaint`, `/api/upscale` (super-resolution);
`GET /api/models`, `GET /api/history[/ID[/image|input|mask]]`.

    curl -s http://127.0.0.1:7860/api/generate -H 'Content-Type: application/json' \\
         -d '{"model": "mnist-text", "prompt": "a 3", "n": 16, "seed": 1}' -o three.png
    curl -s http://127.0.0.1:7860/api/inpaint -H 'Content-Type: application/json' \\
         -d '{"digit": 17, "mask": "top", "seed": 1}' -o completed.png
    curl -s http://127.0.0.1:7860/api/upscale -H 'Content-Type: application/json' \\
         -d '{"model": "sr-run", "digit": 17, "seed": 1}' -o upscaled.png

The body's fields are the pipeline's argument names plus `model` and `format` (schema.py), and an edit's image
and mask (images.py); the answer is the PNG grid `diffusa generate --out x.png` writes for the same settings
(`pipe.img2img(...)` / `pipe.inpaint(...)` / `pipe.upscale(...)`'s for an edit or an upscale), byte for byte (or the
.npz of `--out x.npz`), with the settings used in the header X-Diffusa-Settings (JSON) and the history id in
X-Diffusa-Id. All four share one queue, one lock and the history with the page. A client that disconnects is
watched for (`run_while_connected`): while its request waits, the request leaves the queue without running; while it
runs, the drawing stops at the next step; neither is kept in the history.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from diffusa.pipelines import DEFAULT_SAMPLER, DEFAULT_STEPS, Pipeline, StepCallback
from diffusa.serve.images import Inputs, edit_inputs
from diffusa.serve.jobs import Generation, Gone, Service, Watch
from diffusa.serve.limits import MAX_BODY, Refusal, limits
from diffusa.serve.schema import (
    EditRequest,
    GenerateRequest,
    ImageSettings,
    InpaintRequest,
    Settings,
    UpscaleRequest,
    parse_json,
    parse_request,
)

JSON_TYPES = ("application/json",)
CLIENT_GONE = 499  # the status of an answer nobody reads (nginx's "client closed request")
log = logging.getLogger("diffusa.serve")


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The body of a JSON request, at most `limit` bytes (415 for another content type, 413 beyond the limit)."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype not in JSON_TYPES:
        raise Refusal(415, f"send the body as JSON with the header 'Content-Type: application/json' (got "
                           f"{ctype or 'none'!r})")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refusal(413, f"the request body is over the limit of {limit} bytes")
    return bytes(body)


def settings_header(settings: dict[str, Any]) -> str:
    """The settings as one line of ASCII JSON (a header value)."""
    return json.dumps(settings, separators=(",", ":"), ensure_ascii=True)


def respond(service: Service, gen: Generation, fmt: str) -> Response:
    """The generation as the response: PNG grid or .npz, settings in the headers."""
    res, entry = gen.samples, gen.entry
    assert entry is not None  # a generation stopped early (its client left) is not answered (run_while_connected)
    headers = {"X-Diffusa-Settings": settings_header(res.settings), "X-Diffusa-Id": entry.id}
    if fmt == "png":
        return Response(entry.png.read_bytes(), media_type="image/png",
                        headers={**headers, "Content-Disposition": f'inline; filename="{entry.id}.png"'})
    tmp = service.history.scratch() / f"{uuid.uuid4().hex}.npz"
    try:
        data = res.save(tmp).read_bytes()
    finally:
        tmp.unlink(missing_ok=True)
    return Response(data, media_type="application/octet-stream",
                    headers={**headers, "Content-Disposition": f'attachment; filename="{entry.id}.npz"'})


async def watch_client(request: Request, gone: threading.Event) -> None:
    """Set `gone` when the client disconnects. Await it once the body is read: the next message is then the
    disconnect (and asking for it has the server read the connection again, so that it notices one closed)."""
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # a receive that fails tells nothing: the request runs as before
        return
    gone.set()


def stop_when(gone: threading.Event) -> Watch:
    """The step callback that stops a drawing at its next step once `gone` is set."""
    def watch(pipe: Pipeline) -> StepCallback:
        return lambda step, t, x_t, x0: gone.is_set()

    return watch


async def run_while_connected(service: Service, request: Request, req: Settings,
                              inputs: Inputs | None) -> Generation | None:
    """`service.run` in a worker thread (call inside `gate.admit()`) while a task watches the client. A client that
    leaves while its request waits: the request leaves the queue at once, nothing loaded or run (Gone); while it
    runs: the drawing stops at its next step, nothing kept. Either is logged in one line and gives None."""
    gone = threading.Event()
    watcher = asyncio.ensure_future(watch_client(request, gone))
    try:
        gen = await run_in_threadpool(service.run, req, "api", stop_when(gone), inputs, gone)
    except Gone:
        log.warning("api: the client of a waiting %s request left; not run, its place in the queue given back",
                    req.task)
        return None
    finally:
        watcher.cancel()
    if gen.entry is None:
        stopped = gen.samples.stopped_at
        log.warning("api: the client of a running %s request left; stopped after step %s, not kept", req.task,
                    "?" if stopped is None else stopped + 1)
        return None
    return gen


def read_inputs(service: Service, req: ImageSettings) -> Inputs:
    """An edit or upscale request's image (and mask), read for its model (images.edit_inputs); an upscale's model
    must be a super-resolution model (400)."""
    return edit_inputs(req, service.image_shape(req.model_name), factor=service.factor(req))


def _post_doc(kind: type[Settings]) -> dict[str, Any]:
    """The OpenAPI description of a POST route taking `kind` as its JSON body."""
    return {"response_class": Response,
            "openapi_extra": {"requestBody": {"required": True, "content": {
                "application/json": {"schema": kind.model_json_schema()}}}},
            "responses": {200: {"content": {"image/png": {}, "application/octet-stream": {}},
                                "description": "the grid (format png) or the arrays (format npz)"},
                          400: {"description": "the pipeline refused the request, an image is not a PNG it can "
                                                "read, or an upscale's model is not a super-resolution model (the "
                                                "message names the field)"},
                          403: {"description": "a model name outside --runs"},
                          404: {"description": "no such model"},
                          413: {"description": "body over the limit, or an image (or an upscale's output) of too "
                                                "many pixels"},
                          415: {"description": "not JSON"},
                          422: {"description": "a field of the wrong type, out of range, or unknown"},
                          429: {"description": "busy: the queue is full"}}}


def build_router(service: Service) -> APIRouter:
    """The API's routes over one service."""
    router = APIRouter(prefix="/api", tags=["api"])

    @router.get("/models", summary="the models (each with its recommended sampler and steps), samplers, defaults "
                                   "and limits")
    def models() -> dict[str, Any]:
        from diffusa.samplers import SAMPLERS
        from diffusa.shipped import SHIPPED

        out = []
        for name in service.models.names():
            try:
                info = service.models.describe(service.models.resolve(name))
            except Exception:  # a damaged run is listed as such, and the list still answers
                info = {"error": "config.json could not be read"}
            out.append({"name": name, "kind": "shipped" if name in SHIPPED else "run",
                        "description": SHIPPED.get(name, ""), **info})
        return {"models": out, "samplers": sorted(SAMPLERS), "limits": limits(),
                "defaults": {"sampler": DEFAULT_SAMPLER, "steps": DEFAULT_STEPS},  # each model's: its "defaults"
                "queue": {"max_queue": service.gate.max_queue, "admitted": service.gate.admitted}}

    async def answer(request: Request, kind: type[Settings]) -> Response:
        """One POST: the body parsed, the model resolved, an edit's or an upscale's image read (their refusals
        before the queue), then a place in the queue and the pipeline call in a worker thread, for as long as the
        client stays (`run_while_connected`; the answer to one that left is CLIENT_GONE, which nobody reads)."""
        req = parse_request(parse_json(await read_body(request)), kind)
        service.models.resolve(req.model_name)  # 403 / 404 before taking a place in the queue
        req = service.resolved(req)  # sampler and steps left out: the model's recommendation (config.json)
        inputs = None
        if isinstance(req, ImageSettings):
            inputs = await run_in_threadpool(read_inputs, service, req)
        with service.gate.admit():
            gen = await run_while_connected(service, request, req, inputs)
        if gen is None:
            return Response(status_code=CLIENT_GONE)
        return respond(service, gen, req.format)

    @router.post("/generate", summary="draw images: a PNG grid (or .npz), settings in X-Diffusa-Settings",
                 **_post_doc(GenerateRequest))
    async def generate(request: Request) -> Response:
        return await answer(request, GenerateRequest)

    @router.post("/edit", summary="img2img: an image (base64 PNG or a held-out digit) redrawn from a noise level",
                 **_post_doc(EditRequest))
    async def edit(request: Request) -> Response:
        return await answer(request, EditRequest)

    @router.post("/inpaint", summary="inpainting: the white part of a mask (base64 PNG or a name) redrawn",
                 **_post_doc(InpaintRequest))
    async def inpaint(request: Request) -> Response:
        return await answer(request, InpaintRequest)

    @router.post("/upscale", summary="super-resolution (SR3): an image (base64 PNG or a held-out digit) drawn at a "
                                     "super-resolution run's factor times its size", **_post_doc(UpscaleRequest))
    async def upscale(request: Request) -> Response:
        return await answer(request, UpscaleRequest)

    @router.get("/history", summary="the newest generations, newest first")
    def history() -> dict[str, Any]:
        return {"generations": [e.record for e in service.history.entries()]}

    @router.get("/history/{gid}", summary="one generation's record")
    def history_entry(gid: str) -> dict[str, Any]:
        return service.history.get(gid).record

    @router.get("/history/{gid}/{part}", summary="one generation's PNG grid (image), or an edit's input or mask",
                response_class=FileResponse)
    def history_image(gid: str, part: str) -> FileResponse:
        entry = service.history.get(gid)
        path = entry.png if part == "image" else entry.part(part)
        if path is None:
            raise Refusal(404, f"generation {gid} has no {part!r} (image; an edit's input; an inpainting's mask)",
                          "part")
        return FileResponse(path, media_type="image/png")

    @router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    def unknown(request: Request, rest: str) -> None:
        """Every other path under /api is the API's to refuse (never the page's)."""
        known = [r for r in router.routes if getattr(r, "path", None) == request.url.path and r is not unknown_route]
        if known:
            raise Refusal(405, f"{request.method} is not allowed on {request.url.path} (see /docs)")
        raise Refusal(404, f"no API route {request.url.path} (see /docs)")

    unknown_route = router.routes[-1]
    return router


__all__ = ["CLIENT_GONE", "build_router", "read_body", "read_inputs", "respond", "run_while_connected",
           "settings_header", "stop_when", "watch_client"]
