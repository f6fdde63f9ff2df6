"""The web page (Gradio Blocks, mounted at / by app.py): generate with a live preview of the predicted x0, a
progress bar and a cancel button; a history gallery whose images reload their settings; a run's metrics.

Every value the page sends goes through the API's own request schema (`page_request` -> schema.parse_request)
and the same queue, so the page can do nothing the API refuses. The handlers are plain functions of the
service (`generate_updates`, `reload`, `history_gallery`, `run_metrics`), tested without a browser.

Image-to-image and inpainting tabs come with the pipeline's `img2img` / `inpaint` (issue 19): each is one more
`with gr.Tab(...)` here over the same service, gate and history.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
import gradio as gr

from diffusa.errors import DiffusaError
from diffusa.pipelines import DEFAULT_N, DEFAULT_SAMPLER, DEFAULT_STEPS, Pipeline
from diffusa.serve.jobs import Generation, Service
from diffusa.serve.limits import MAX_N, MAX_PROMPT, MAX_STEPS
from diffusa.serve.schema import GenerateRequest, parse_request

log = logging.getLogger("diffusa.serve")
PREVIEWS = 8  # live previews of the predicted x0 per generation
PREVIEW_IMAGES = 16  # images in a preview grid
SEED_MAX = 2**31 - 1  # the dice's range (a browser's numbers are exact to 2**53)
METRIC_FILES, METRIC_BYTES = 8, 256 * 1024  # JSON files of a run shown in the metrics panel, and their size

# the page's generation controls, in the order the handlers take and return them
CONTROLS = ("model", "prompt", "label", "sampler", "steps", "guidance_scale", "eta", "seed", "n")


def _number(value: Any) -> Any:
    """A page number as JSON would carry it: an integral float becomes an int, a blank None, a number's text the
    number (anything else stays, for the schema to refuse naming its field)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip()) if any(c in value for c in ".eE") else int(value.strip())
        except ValueError:
            return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _label(text: Any) -> Any:
    """The class box: blank -> None, 'all', an integer, or integers separated by commas."""
    if text is None or not str(text).strip():
        return None
    text = str(text).strip()
    parts = [p.strip() for p in text.split(",")]
    if all(p.isdecimal() for p in parts):
        return int(parts[0]) if len(parts) == 1 else [int(p) for p in parts]
    return text  # "all", or something the schema refuses, naming the label


def page_request(model: Any, prompt: Any, label: Any, sampler: Any, steps: Any, guidance_scale: Any, eta: Any,
                 seed: Any, n: Any) -> GenerateRequest:
    """The page's values as an API request (the same schema, the same limits)."""
    body = {"model": model or None, "prompt": prompt if isinstance(prompt, str) and prompt.strip() else None,
            "label": _label(label), "sampler": sampler or DEFAULT_SAMPLER, "steps": _number(steps),
            "guidance_scale": _number(guidance_scale), "eta": _number(eta), "seed": _number(seed) or 0,
            "n": _number(n)}
    for key in ("guidance_scale", "eta"):  # a float field takes an int too, as in JSON
        if isinstance(body[key], int):
            body[key] = float(body[key])
    return parse_request({k: v for k, v in body.items() if v is not None})


def grid_image(x: Any) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] as one uint8 grid for the page: (H, W) gray or (H, W, 3) colour."""
    from diffusa.viz import image_grid

    grid = image_grid(x.detach().float().cpu())
    return grid[..., 0] if grid.shape[-1] == 1 else grid


def preview_grid(pipe: Pipeline, x0: Any) -> np.ndarray | None:
    """A grid of the first images of a step's predicted x0 (decoded for a latent model); None for points."""
    if not pipe.is_image:
        return None
    return grid_image(pipe.decode(x0[:PREVIEW_IMAGES].detach()))


def generate_updates(service: Service, req: GenerateRequest, stop: threading.Event,
                     progress: Any = None) -> Iterator[tuple[np.ndarray | None, Generation | None, str]]:
    """Run one generation in a worker thread and yield (preview, None, status) as it goes, then
    (None, generation, status). `stop` set: the drawing ends at the next step (nothing kept in the history).
    Busy (429) and the pipeline's refusals raise before anything runs, as DiffusaError."""
    updates: queue.Queue[tuple[int, np.ndarray | None]] = queue.Queue()
    done: dict[str, Any] = {}
    every = max(1, req.steps // PREVIEWS)

    def watch(pipe: Pipeline) -> Any:
        def step(i: int, t: float, x_t: Any, x0: Any) -> bool:
            if stop.is_set():
                return True
            updates.put((i, preview_grid(pipe, x0) if i % every == every - 1 or i == req.steps - 1 else None))
            return False

        return step

    def work() -> None:
        try:
            done["gen"] = service.run(req, "ui", watch)
        except BaseException as e:  # handed to the page's thread
            done["error"] = e

    with service.gate.admit():
        worker = threading.Thread(target=work, name="diffusa-generate", daemon=True)
        worker.start()
        try:
            while worker.is_alive() or not updates.empty():
                try:
                    i, image = updates.get(timeout=0.1)
                except queue.Empty:
                    continue
                if progress is not None:
                    progress((i + 1, req.steps), desc="sampling")
                if image is not None:
                    yield image, None, f"step {i + 1} of {req.steps}"
            worker.join()
        finally:
            stop.set()  # a page closed mid-way stops the drawing at its next step
            worker.join(timeout=30)
    if "error" in done:
        raise done["error"]
    gen: Generation = done["gen"]
    s = gen.samples.settings
    if gen.samples.stopped_at is not None:
        status = f"stopped at step {gen.samples.stopped_at + 1} of {req.steps}: the predicted x0 (not kept)"
    else:
        status = f"{s['n']} images, {s['sampler']} {s['steps']} steps ({s['nfe']} evaluations), seed {s['seed']}"
    yield None, gen, status


def history_gallery(service: Service) -> tuple[list[tuple[str, str]], list[str]]:
    """The gallery's images (PNG path, caption), newest first, and their ids."""
    items, ids = [], []
    for e in service.history.entries():
        r = e.request
        what = r.get("prompt") or (f"label {r['label']}" if r.get("label") is not None else "unconditional")
        items.append((str(e.png), f"{r.get('model')}: {what}, seed {r.get('seed')}"[:120]))
        ids.append(e.id)
    return items, ids


def reload(service: Service, gid: str) -> tuple[list[Any], str, dict[str, Any]]:
    """A history entry's settings as the controls' values (CONTROLS order), its PNG, and its settings."""
    e = service.history.get(gid)
    r = e.request
    label = r.get("label")
    values = {"model": r.get("model"), "prompt": r.get("prompt") if isinstance(r.get("prompt"), str) else "",
              "label": "" if label is None else (",".join(map(str, label)) if isinstance(label, list) else str(label)),
              "sampler": r.get("sampler"), "steps": r.get("steps"), "guidance_scale": r.get("guidance_scale"),
              "eta": r.get("eta"), "seed": r.get("seed"), "n": r.get("n") or e.settings.get("n") or DEFAULT_N}
    return [values[k] for k in CONTROLS], str(e.png), e.record


def run_metrics(service: Service, name: str) -> tuple[np.ndarray | None, str]:
    """A model's metrics panel: its loss curve (loss.png) and the numbers of its JSON files (eval --out),
    each beside its floor where the file has one; for a shipped model, how it was trained."""
    from PIL import Image

    from diffusa.checkpoint import load_json

    path = service.models.resolve(name)
    lines = [f"### {name}"]
    meta = load_json(path / "config.json")
    if isinstance(meta.get("shipped"), dict):
        lines.append("shipped: " + ", ".join(f"{k} `{v}`" for k, v in meta["shipped"].items())[:2000])
    loss = None
    loss_png = path / "loss.png"
    if loss_png.is_file() and loss_png.resolve().is_relative_to(path):
        with Image.open(loss_png) as im:
            loss = np.asarray(im.convert("RGB"))
    files = [p for p in sorted(path.glob("*.json")) if p.name not in ("config.json", "train_state.json")
             and p.resolve().is_relative_to(path) and p.stat().st_size <= METRIC_BYTES][:METRIC_FILES]
    for f in files:
        try:
            data = load_json(f)
        except DiffusaError:
            continue
        rows = [(k, v, data.get(f"{k}_floor")) for k, v in data.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.endswith("_floor")]
        if rows:
            lines += [f"\n**{f.name}**\n", "| metric | value | floor (real vs real) |", "|---|---|---|",
                      *(f"| {k} | {v:.4g} | {'' if fl is None else f'{fl:.4g}'} |" for k, v, fl in rows)]
    if loss is None and len(lines) == 1:
        lines.append("no loss curve or metrics here (`diffusa eval RUN --out RUN/metrics.json` writes some)")
    return loss, "\n".join(lines)


def build_ui(service: Service) -> Any:
    """The page's Blocks over a service."""
    from diffusa.samplers import SAMPLERS

    stops: dict[str, threading.Event] = {}

    def fail(e: BaseException) -> Exception:
        if isinstance(e, DiffusaError):
            return gr.Error(service.models.redact(str(e)), print_exception=False)
        log.error("internal error in the page", exc_info=e)
        return gr.Error("internal error; the server's log has the details", print_exception=False)

    def on_generate(model: Any, prompt: Any, label: Any, sampler: Any, steps: Any, guidance: Any, eta: Any,
                    seed: Any, n: Any, request: gr.Request, progress: gr.Progress = gr.Progress()) -> Iterator[Any]:  # noqa: B008
        stop = threading.Event()
        key = request.session_hash or secrets.token_hex(8)
        stops[key] = stop
        try:
            req = page_request(model, prompt, label, sampler, steps, guidance, eta, seed, n)
            for preview, gen, status in generate_updates(service, req, stop, progress):
                if gen is None:
                    yield preview, gr.skip(), gr.skip(), status, gr.skip(), gr.skip()
                else:
                    items, ids = history_gallery(service)
                    png = str(gen.entry.png) if gen.entry is not None else None
                    result = png if png is not None else (grid_image(gen.samples.samples[:PREVIEW_IMAGES])
                                                          if gen.samples.is_image else None)
                    yield gr.skip(), result, gen.samples.settings, status, items, ids
        except Exception as e:
            raise fail(e) from None
        finally:
            stops.pop(key, None)

    def on_cancel(request: gr.Request) -> str:
        stop = stops.get(request.session_hash or "")
        if stop is None:
            return "nothing is running"
        stop.set()
        return "stopping after this step"

    def on_history() -> tuple[Any, list[str]]:
        items, ids = history_gallery(service)
        return items, ids

    def on_select(ids: list[str], evt: gr.SelectData) -> list[Any]:
        try:
            values, png, record = reload(service, ids[evt.index])
        except Exception as e:
            raise fail(e) from None
        return [*values, png, record, f"reloaded {record['id']}: generate draws it again"]

    def on_metrics(name: str) -> tuple[Any, str]:
        try:
            return run_metrics(service, name)
        except Exception as e:
            raise fail(e) from None

    def on_models() -> tuple[Any, Any]:
        names = service.models.names()
        return gr.update(choices=names), gr.update(choices=names)

    from diffusa.shipped import DEFAULT_TEXT_MODEL

    names = service.models.names()
    with gr.Blocks(title="diffusa", analytics_enabled=False) as page:
        gr.Markdown("## diffusa\nDraw digits from the shipped models or your runs. The same settings and seed give "
                    "the same images here, in the API (`/docs`), on the command line and in Python.")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    model = gr.Dropdown(names, value=DEFAULT_TEXT_MODEL, label="model",
                                        allow_custom_value=True)
                    prompt = gr.Textbox(label="prompt (text models)", value="a handwritten three",
                                        max_length=MAX_PROMPT, elem_id="prompt")
                    label = gr.Textbox(label="class: K, 'all', or K1,K2,... (blank: none)", value="")
                    sampler = gr.Dropdown(sorted(SAMPLERS), value=DEFAULT_SAMPLER, label="sampler")
                    steps = gr.Slider(1, MAX_STEPS, value=DEFAULT_STEPS, step=1, label="steps")
                    guidance = gr.Textbox(value="", label="guidance scale", placeholder="blank: the model's default "
                                                                                       "(3 for a text model)")
                    eta = gr.Textbox(value="", label="eta (ddim, euler_ancestral, dpmpp_2m_sde)",
                                     placeholder="blank: the sampler's default")
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, label="seed", minimum=0, elem_id="seed")
                        dice = gr.Button("random seed", size="sm", elem_id="dice")
                    n = gr.Slider(1, MAX_N, value=DEFAULT_N, step=1, label="images")
                    with gr.Row():
                        go = gr.Button("Generate", variant="primary", elem_id="generate")
                        cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
                    status = gr.Markdown(elem_id="status")
                with gr.Column(scale=2):
                    with gr.Row():
                        preview = gr.Image(label="predicted x0 (live)", type="numpy", format="png",
                                           interactive=False)
                        result = gr.Image(label="result", type="filepath", format="png", interactive=False,
                                          elem_id="result")
                    settings = gr.JSON(label="settings")
            gr.Markdown("### History (click an image to reload its settings and seed)")
            gallery = gr.Gallery(label="history", columns=6, height="auto", allow_preview=False,
                                 interactive=False, format="png", elem_id="history")
            ids = gr.State([])
        with gr.Tab("Metrics"):
            run = gr.Dropdown(names, value=names[0], label="model or run", allow_custom_value=True)
            with gr.Row():
                loss = gr.Image(label="loss curve", type="numpy", interactive=False)
                numbers = gr.Markdown()
        controls = [model, prompt, label, sampler, steps, guidance, eta, seed, n]
        go.click(on_generate, controls, [preview, result, settings, status, gallery, ids], concurrency_limit=1,
                 api_visibility="private")
        cancel.click(on_cancel, None, status, concurrency_limit=None, api_visibility="private")
        dice.click(lambda: secrets.randbelow(SEED_MAX), None, seed, concurrency_limit=None,
                   api_visibility="private")
        gallery.select(on_select, ids, [*controls, result, settings, status], concurrency_limit=None,
                       api_visibility="private")
        run.change(on_metrics, run, [loss, numbers], concurrency_limit=None, api_visibility="private")
        page.load(on_history, None, [gallery, ids], concurrency_limit=None, api_visibility="private")
        page.load(on_models, None, [model, run], concurrency_limit=None, api_visibility="private")
        page.load(on_metrics, run, [loss, numbers], concurrency_limit=None, api_visibility="private")
    page.queue(max_size=max(1, service.gate.max_queue), default_concurrency_limit=1)
    return page


__all__ = ["CONTROLS", "build_ui", "generate_updates", "grid_image", "history_gallery", "page_request", "preview_grid",
           "reload", "run_metrics"]
