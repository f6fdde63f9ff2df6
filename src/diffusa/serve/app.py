"""`create_app(...)`: the FastAPI application of `diffusa serve` — the REST API under /api, the OpenAPI page at
/docs, the Gradio page at /, all behind one Guard (guard.py) and one queue (jobs.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from diffusa._version import __version__
from diffusa.errors import DiffusaError
from diffusa.serve.api import build_router
from diffusa.serve.guard import Guard, check_token
from diffusa.serve.history import History
from diffusa.serve.jobs import Service
from diffusa.serve.limits import DEFAULT_QUEUE, MAX_UPLOAD, Refusal
from diffusa.serve.models import Models

log = logging.getLogger("diffusa.serve")
DEFAULT_HISTORY = "diffusa-history"


def create_app(*, runs: str | Path | None = None, history: str | Path = DEFAULT_HISTORY, token: str | None = None,
               listen: bool = False, max_queue: int = DEFAULT_QUEUE, device: str = "cpu",
               ui: bool = True) -> FastAPI:
    """The application. `runs`: the folder whose run folders may be loaded (besides the shipped models);
    `history`: where generations are kept; `token`: required on every request when given (and `listen`, answering
    any Host, requires one); `max_queue`: requests that may wait behind the running one; `ui`: mount the page."""
    check_token(token)
    if listen and token is None:
        raise DiffusaError("--listen serves other machines and needs an access token (--token, or let diffusa "
                           "serve generate one)")
    service = Service(Models(runs), History(history), max_queue, device)
    app = FastAPI(title="diffusa", version=__version__, docs_url="/docs", redoc_url=None,
                  description="Diffusion models over HTTP: `POST /api/generate` draws images with the pipeline's "
                              "arguments, `POST /api/edit` (img2img) and `POST /api/inpaint` edit an image (a base64 "
                              "PNG or a held-out digit), `POST /api/upscale` upscales one with a super-resolution "
                              "run; the web page is at /. See docs/serve.md.")
    app.state.service = service

    @app.exception_handler(Refusal)
    async def refused(request: Request, exc: Refusal) -> JSONResponse:
        headers = {"Retry-After": "5"} if exc.status == 429 else None
        return JSONResponse({"detail": service.models.redact(str(exc)), "field": exc.field}, exc.status,
                            headers=headers)

    @app.exception_handler(DiffusaError)
    async def user_error(request: Request, exc: DiffusaError) -> JSONResponse:
        return JSONResponse({"detail": service.models.redact(str(exc))}, 400)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error; the server's log has the details"}, 500)

    app.include_router(build_router(service))
    if ui:
        from diffusa.serve.ui import CSS, build_ui, gr  # ui.py turns Gradio's analytics off before importing it

        gr.mount_gradio_app(app, build_ui(service), path="", allowed_paths=[str(service.history.folder)],
                            show_error=True, max_file_size=MAX_UPLOAD, footer_links=["api"], run_history=False,
                            ssr_mode=False, mcp_server=False, enable_monitoring=False, pwa=False, css=CSS)
    app.add_middleware(Guard, token=token, loopback=not listen)
    return app


__all__ = ["DEFAULT_HISTORY", "create_app"]
