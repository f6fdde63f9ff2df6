"""The web page (Gradio Blocks, mounted at / by app.py): tabs to generate, edit (img2img), inpaint and upscale, each
with a live preview of the predicted x0, a progress bar and a cancel button; a history gallery whose images reload
their tab's settings (and an edit's image and mask); a run's metrics.

Every value the page sends goes through the API's own request schemas (`page_request`, `page_edit_request` ->
schema.parse_request), its images through the API's reader (images.py: the header's size checked before
decoding), and the same queue, so the page can do nothing the API refuses. The inpainting mask is painted in a
gr.ImageEditor over the image enlarged, and scaled down to the model's size (`painted_mask`). The upscale tab lists
the super-resolution runs (`upscalers`) and shows the result beside the input enlarged bicubically
(`bicubic_image`). The handlers are plain functions of the service (`generate_updates`, `page_inputs`, `reload`,
`history_gallery`, `run_metrics`), tested without a browser.
"""

from __future__ import annotations

import io
import logging
import math
import os
import queue
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
import gradio as gr

from diffusa.errors import DiffusaError
from diffusa.pipelines import (
    DEFAULT_JUMP_LENGTH,
    DEFAULT_N,
    DEFAULT_STRENGTH,
    Pipeline,
)
from diffusa.pipelines.edit import MASK_EXAMPLES
from diffusa.serve.history import Entry
from diffusa.serve.images import Inputs, edit_inputs, held_out_digit, mode_of, read_png
from diffusa.serve.jobs import Generation, Service
from diffusa.serve.limits import MAX_EDIT_PIXELS, MAX_N, MAX_PROMPT, MAX_STEPS, Refusal
from diffusa.serve.schema import (
    EditRequest,
    GenerateRequest,
    ImageSettings,
    InpaintRequest,
    R,
    Settings,
    UpscaleRequest,
    parse_request,
)

log = logging.getLogger("diffusa.serve")
PREVIEWS = 8  # live previews of the predicted x0 per generation
PREVIEW_IMAGES = 16  # images in a preview grid
SEED_MAX = 2**31 - 1  # the dice's range (a browser's numbers are exact to 2**53)
METRIC_FILES, METRIC_BYTES = 8, 256 * 1024  # JSON files of a run shown in the metrics panel, and their size

EDITOR_SIDE = 224  # the mask editor shows the image enlarged to about this side (a 28x28 digit: 8x)
VIEW_HEIGHT = 240  # pixels of an edit tab's before / preview / after images
BRUSH_SIZE, BRUSH_COLOR, BRUSH_RGB = 10, "#ff3b30", (255, 59, 48)  # the mask's brush: radius in editor pixels
EDITOR_LAYERS, EDITOR_BLOBS = 4, 8  # the mask editor's layers (it shows one), and edits whose blobs are kept
DIGIT, UPLOAD = "held-out digit", "upload"  # an edit tab's image sources
PAINTED = "painted"  # the inpainting mask drawn in the editor; the other choices: the pipeline's MASK_EXAMPLES

# each tab's controls, in the order its handler takes them and `reload` returns them
CONTROLS = ("model", "prompt", "label", "sampler", "steps", "guidance_scale", "eta", "seed", "n")
EDIT_CONTROLS = ("model", "source", "digit", "upload", "strength", "prompt", "label", "sampler", "steps",
                 "guidance_scale", "eta", "seed", "n")
INPAINT_CONTROLS = ("model", "source", "digit", "upload", "mask", "editor", "jump_length", "jump_n_sample", "prompt",
                    "label", "sampler", "steps", "guidance_scale", "eta", "seed", "n")
UPSCALE_CONTROLS = ("model", "source", "digit", "upload", "noise_level", "prompt", "label", "sampler", "steps",
                    "guidance_scale", "eta", "seed")
TASK_CONTROLS = {"generate": CONTROLS, "img2img": EDIT_CONTROLS, "inpaint": INPAINT_CONTROLS,
                 "upscale": UPSCALE_CONTROLS}
TASK_REQUESTS: dict[str, type[Settings]] = {"generate": GenerateRequest, "img2img": EditRequest,
                                            "inpaint": InpaintRequest, "upscale": UpscaleRequest}
# the upscale tab's images fill their frames, pixels kept square: the input's bicubic enlargement, the preview and
# the result (the history's PNG, its bytes unchanged) side by side at one size, however small the model's images
CSS = ("#upscale-before img, #upscale-preview img, #upscale-result img "
       "{width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated}")
NO_UPSCALER = ("no super-resolution run here yet: train one with `diffusa train --set data.super_resolution=2` "
               "and serve its folder with `--runs`")


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


def page_body(model: Any, prompt: Any, label: Any, sampler: Any, steps: Any, guidance_scale: Any, eta: Any,
              seed: Any, n: Any, **extra: Any) -> dict[str, Any]:
    """The page's values as an API request's JSON body (blank values left out, numbers as JSON carries them)."""
    body = {"model": model or None, "prompt": prompt if isinstance(prompt, str) and prompt.strip() else None,
            "label": _label(label), "sampler": sampler or None, "steps": _number(steps),
            "guidance_scale": _number(guidance_scale), "eta": _number(eta), "seed": _number(seed) or 0,
            "n": _number(n)}
    body.update({k: (v or None) if k == "mask" else _number(v) for k, v in extra.items()})  # a name, or numbers
    for key in ("guidance_scale", "eta", "strength", "noise_level"):  # a float field takes an int too, as in JSON
        if isinstance(body.get(key), int):
            body[key] = float(body[key])
    return {k: v for k, v in body.items() if v is not None}


def page_request(model: Any, prompt: Any, label: Any, sampler: Any, steps: Any, guidance_scale: Any, eta: Any,
                 seed: Any, n: Any) -> GenerateRequest:
    """The page's values as an API request (the same schema, the same limits; a blank sampler or steps: the
    model's recommendation, filled in by `Service.resolved`)."""
    return parse_request(page_body(model, prompt, label, sampler, steps, guidance_scale, eta, seed, n))


def model_sampling(service: Service, model: Any, task: str = "generate", steps: int | None = None) -> tuple[str, int]:
    """The sampler and steps a tab shows for `model`: what a request that leaves them out gets (`Service.defaults`:
    the model's recommendation in its config.json, else the global defaults; inpainting's own sampler first; at
    `steps` if given); the global ones for a blank model or one that cannot be read (a request for it then says
    why)."""
    from diffusa.pipelines.sampling import resolve_sampling

    task_sampler = TASK_REQUESTS[task].task_sampler
    if isinstance(model, str) and model.strip():
        try:
            return service.defaults(model, task_sampler, steps)
        except DiffusaError:
            pass
    sampler, steps, _ = resolve_sampling(None, None, steps, task_sampler=task_sampler)
    return sampler, steps


def steps_sampler(service: Service, model: Any, task: str, steps: Any, sampler: Any) -> str:
    """The sampler a tab shows after its steps change: the model's choice at the new steps (a recommendation's
    "few_steps" sampler at few, its main one at more) where the field holds one of the model's own choices; a
    sampler the user picked stays."""
    if isinstance(steps, bool) or not isinstance(steps, (int, float)) or not math.isfinite(steps) or steps < 1 \
            or steps != int(steps):
        return sampler  # the request says what is wrong with it
    own = {model_sampling(service, model, task, k)[0] for k in (None, 1)}
    return model_sampling(service, model, task, int(steps))[0] if sampler in own else sampler


def inpaint_passes(service: Service, model: Any) -> int:
    """The RePaint passes per jump the inpaint tab shows for `model`: 1 (the known region replaced before every step,
    no jumps: `pipe.inpaint`'s default there) for a mask-conditioned inpainting model (data.inpaint), else
    DEFAULT_JUMP_N_SAMPLE, also for one that cannot be read (a request then says why); a blank model is the
    tab's default (`shipped.default_model("inpaint")`), as a request that leaves it out."""
    from diffusa.pipelines.edit import default_jump_n_sample
    from diffusa.shipped import default_model

    name = model if isinstance(model, str) and model.strip() else default_model("inpaint")
    try:
        return default_jump_n_sample(bool(service.models.describe(service.models.resolve(name))["inpaint"]))
    except DiffusaError:
        return default_jump_n_sample(False)


def page_edit_request(kind: type[R], model: Any, source: Any, digit: Any, prompt: Any, label: Any, sampler: Any,
                      steps: Any, guidance_scale: Any, eta: Any, seed: Any, n: Any, **extra: Any) -> R:
    """The edit tabs' values as an API request of `kind` (EditRequest, InpaintRequest, UpscaleRequest): the digit
    when the source is a held-out digit (an upload's pixels go beside the request, `page_inputs`)."""
    body = page_body(model, prompt, label, sampler, steps, guidance_scale, eta, seed, n, **extra)
    if source == DIGIT:
        body["digit"] = _number(digit) if digit is not None else 0
    return parse_request(body, kind)


def read_upload(path: Any, mode: str, factor: int = 0) -> np.ndarray:
    """An uploaded file (its size bounded by the page's upload limit) read as the API reads image_png (with an
    upscale's factor, held to the upscale limits)."""
    if not path:
        raise Refusal(422, "image: upload a PNG, or pick a held-out digit", "image")
    return read_png(Path(path).read_bytes(), "image", mode, factor)


def page_inputs(service: Service, req: ImageSettings, upload: Any = None, painted: Any = None) -> Inputs:
    """An edit or upscale tab's image (the digit of `req`, or the uploaded file) and mask (the name in `req`, or
    the mask painted in the editor, `painted_mask`), as the API's `edit_inputs` gives them."""
    shape = service.image_shape(req.model_name)
    factor = service.factor(req)
    image = None if req.digit is not None else read_upload(upload, mode_of(shape), factor)
    mask = None
    if isinstance(req, InpaintRequest) and req.mask is None:
        mask = painted_mask(painted, shape[-2:])
    return edit_inputs(req, shape, image, mask, factor)


def _listed_as(service: Service, key: str) -> list[str]:
    """The models the server answers to whose GET /api/models entry has `key` set."""
    out = []
    for name in service.models.names():
        try:
            if service.models.describe(service.models.resolve(name))[key]:
                out.append(name)
        except Exception:  # a damaged run is neither; the metrics tab and GET /api/models say more
            continue
    return out


def upscalers(service: Service) -> list[str]:
    """The super-resolution models the server answers to (those whose config.json has data.super_resolution)."""
    return _listed_as(service, "super_resolution")


def inpainters(service: Service) -> list[str]:
    """The mask-conditioned inpainting models the server answers to (data.inpaint): listed on the inpaint tab only,
    as they draw only given an image and a mask."""
    return _listed_as(service, "inpaint")


def bicubic_image(inputs: Inputs, channels: int, factor: int) -> np.ndarray:
    """An image to upscale (`inputs.image`, read for a model of `channels`) enlarged `factor` times by bicubic
    interpolation, as a grid like the result's: what the upscale is to beat (`diffusa upscale`'s strip shows it)."""
    import torch.nn.functional as F

    from diffusa.pipelines.edit import as_images

    h, w = inputs.keep["input"].shape[:2]
    low = as_images(inputs.image, (channels, h, w))[:1]
    return grid_image(F.interpolate(low, scale_factor=factor, mode="bicubic", align_corners=False).clamp(-1, 1))


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W[, C]) pixels as (H, W, 3)."""
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        return pixels
    return np.repeat(pixels.reshape(*pixels.shape[:2], 1), 3, -1)


def enlarge(pixels: np.ndarray, side: int = EDITOR_SIDE) -> np.ndarray:
    """uint8 (H, W[, C]) pixels as RGB, enlarged by a whole factor (nearest) towards `side` (for the page)."""
    rgb = _rgb(pixels)
    k = max(1, side // max(rgb.shape[:2]))
    return np.ascontiguousarray(rgb.repeat(k, 0).repeat(k, 1))


def painted_mask(value: Any, hw: tuple[int, ...]) -> np.ndarray:
    """The strokes of the mask editor as a mask of the model's size `hw`: uint8 (H, W), 255 (repaint) where the
    strokes cover at least half of the pixel, else 0. No strokes: an empty mask (the pipeline refuses it)."""
    import torch
    import torch.nn.functional as F

    layers = value.get("layers") if isinstance(value, dict) else None
    layers = [a for a in layers or [] if isinstance(a, np.ndarray) and a.ndim in (2, 3)]
    if not layers:
        return np.zeros(tuple(hw), np.uint8)
    alpha = np.zeros(layers[0].shape[:2], bool)
    for a in layers:
        if a.shape[:2] != alpha.shape:
            continue
        rgba = a.ndim == 3 and a.shape[-1] == 4
        alpha |= (a[..., 3] >= 128) if rgba else (a.reshape(*a.shape[:2], -1) > 0).any(-1)
    cover = F.interpolate(torch.from_numpy(alpha).float()[None, None], size=tuple(hw), mode="area")[0, 0]
    return ((cover >= 0.5).numpy() * 255).astype(np.uint8)


def editor_value(pixels: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Any]:
    """The mask editor's value: the image enlarged as its background, and a mask's pixels (uint8 (H, W), white =
    repaint) as a red layer of strokes over it."""
    background = enlarge(pixels)
    layers = []
    if mask is not None:
        h, w = background.shape[:2]
        cover = np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST)) >= 128
        layer = np.zeros((h, w, 4), np.uint8)
        layer[cover] = (*BRUSH_RGB, 255)
        layers.append(layer)
    return {"background": background, "layers": layers, "composite": None}


def before_image(inputs: Inputs, shape: tuple[int, ...]) -> np.ndarray:
    """What an edit starts from, as the model sees it (resized to its size), enlarged; the part to repaint tinted."""
    from diffusa.data import unit_to_uint8
    from diffusa.pipelines.edit import as_images, as_mask

    view = _rgb(unit_to_uint8(as_images(inputs.image, shape)[:1])[0]).astype(np.float32)
    if inputs.mask is not None:
        m = as_mask(inputs.mask, shape[-2:])[0, 0].numpy()
        view[m] = 0.5 * view[m] + 0.5 * np.array(BRUSH_RGB, np.float32)
    return enlarge(view.round().astype(np.uint8))


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


def generate_updates(service: Service, req: Settings, stop: threading.Event, progress: Any = None,
                     inputs: Inputs | None = None) -> Iterator[tuple[np.ndarray | None, Generation | None, str]]:
    """Run one generation (or an edit of `inputs`) in a worker thread and yield (preview, None, status) as it
    goes, then (None, generation, status). `stop` set: the drawing ends at the next step (nothing kept in the
    history). Busy (429) and the pipeline's refusals raise before anything runs, as DiffusaError."""
    updates: queue.Queue[tuple[int, np.ndarray | None]] = queue.Queue()
    done: dict[str, Any] = {}
    req = service.resolved(req)  # sampler and steps left out: the model's recommendation, as the API fills them in
    total = req.total_steps()  # an edit's is an estimate (img2img: strength x steps), kept at least the step seen
    every = max(1, total // PREVIEWS)

    def watch(pipe: Pipeline) -> Any:
        def step(i: int, t: float, x_t: Any, x0: Any) -> bool:
            if stop.is_set():
                return True
            updates.put((i, preview_grid(pipe, x0) if i % every == every - 1 or i == total - 1 else None))
            return False

        return step

    def work() -> None:
        try:
            done["gen"] = service.run(req, "ui", watch, inputs)
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
                total = max(total, i + 1)
                if progress is not None:
                    progress((i + 1, total), desc="sampling")
                if image is not None:
                    yield image, None, f"step {i + 1} of {total}"
            worker.join()
        finally:
            stop.set()  # a page closed mid-way stops the drawing at its next step
            worker.join(timeout=30)
    if "error" in done:
        raise done["error"]
    gen: Generation = done["gen"]
    s = gen.samples.settings
    if gen.samples.stopped_at is not None:
        status = f"stopped at step {gen.samples.stopped_at + 1} of {total}: the predicted x0 (not kept)"
    else:
        status = f"{s['n']} images, {s['sampler']} {s['steps']} steps ({s['nfe']} evaluations), seed {s['seed']}"
        if req.task == "img2img":
            status = f"edited: {status}; strength {s['strength']:g} ran {s['sampler_steps']} of the steps"
        elif req.task == "upscale":
            (ih, iw), (oh, ow) = s["input_size"], s["output_size"]
            status = (f"upscaled x{s['factor']}: {ih}x{iw} -> {oh}x{ow} in {s['tiles']} tile"
                      f"{'s' if s['tiles'] > 1 else ''}, noise level {s['noise_level']:g}; {status}")
        elif req.task == "inpaint":
            status = (f"inpainted: {status}; jumps {s['jump_length']} x {s['jump_n_sample']}, "
                      f"{s['reverse_steps']} reverse steps, {s['masked_fraction']:.0%} masked")
    yield None, gen, status


def _caption(e: Entry) -> str:
    r = e.request
    what = r.get("prompt") or (f"label {r['label']}" if r.get("label") is not None else "unconditional")
    if e.task == "generate":
        return f"{r.get('model')}: {what}, seed {r.get('seed')}"[:120]
    source = f"digit {r['digit']}" if r.get("digit") is not None else "an upload"
    how = {"img2img": f"strength {e.settings.get('strength')}", "upscale": f"x{e.settings.get('factor')}"}.get(
        e.task, f"mask {r.get('mask') or 'painted'}")
    return f"{r.get('model')}: {e.task} of {source} ({how}), {what}, seed {r.get('seed')}"[:120]


def history_gallery(service: Service) -> tuple[list[tuple[str, str]], list[str]]:
    """The gallery's images (PNG path, caption), newest first, and their ids."""
    items, ids = [], []
    for e in service.history.entries():
        items.append((str(e.png), _caption(e)))
        ids.append(e.id)
    return items, ids


def _stored_pixels(path: Path | None) -> np.ndarray | None:
    """An edit's input or mask PNG from the history, read as the uploads are (None when it is not there)."""
    if path is None:
        return None
    from diffusa.data.folders import GRAY_MODES, image_header

    try:
        mode = "L" if image_header(path)[0] in GRAY_MODES else "RGB"
        return read_png(path.read_bytes(), path.name, mode)
    except DiffusaError as e:
        log.warning("history: cannot read %s (%s)", path.name, e)
        return None


def source_of(e: Entry) -> np.ndarray | None:
    """An edit's image as uint8 (H, W, C): its held-out digit, or its stored input (None if that is gone)."""
    digit = e.request.get("digit")
    if isinstance(digit, int) and not isinstance(digit, bool):
        return held_out_digit(digit)[1]
    return _stored_pixels(e.part("input"))


def reload(service: Service, gid: str) -> tuple[list[Any], str, dict[str, Any]]:
    """A history entry's settings as its tab's controls' values (TASK_CONTROLS[task] order: CONTROLS for a
    generation), its PNG, and its record. An edit's image comes back as its digit or its stored input, and a
    painted mask as the editor's strokes."""
    e = service.history.get(gid)
    r = e.request
    label = r.get("label")
    values = {"model": r.get("model"), "prompt": r.get("prompt") if isinstance(r.get("prompt"), str) else "",
              "label": "" if label is None else (",".join(map(str, label)) if isinstance(label, list) else str(label)),
              "sampler": r.get("sampler"), "steps": r.get("steps"), "guidance_scale": r.get("guidance_scale"),
              "eta": r.get("eta"), "seed": r.get("seed"), "n": r.get("n") or e.settings.get("n") or DEFAULT_N}
    if e.task != "generate":
        digit = r.get("digit")
        stored = e.part("input")
        values.update(source=DIGIT if digit is not None else UPLOAD, digit=0 if digit is None else digit,
                      upload=None if digit is not None or stored is None else str(stored),
                      n=r.get("n") or e.settings.get("n") or 1)
        if e.task == "img2img":
            values["strength"] = r.get("strength") if r.get("strength") is not None else e.settings.get("strength")
        elif e.task == "upscale":
            values["noise_level"] = r.get("noise_level")
        else:
            pixels = source_of(e)
            mask = _stored_pixels(e.part("mask"))
            editor = None if pixels is None else editor_value(pixels, None if mask is None else mask[..., 0])
            values.update(mask=r.get("mask") or PAINTED, jump_length=r.get("jump_length"),
                          jump_n_sample=r.get("jump_n_sample"), editor=editor)
    return [values[k] for k in TASK_CONTROLS[e.task]], str(e.png), e.record


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


def guard_editor(editor: Any) -> Any:
    """A gr.ImageEditor made safe to take images from a browser (on the instance: a subclass would make Gradio
    write a .pyi stub beside this file): every image it decodes — the background the page sets, the strokes the
    browser sends — has its size read from the header and checked first, as an uploaded image's is; the blobs
    the browser sends ahead are kept for at most EDITOR_BLOBS edits, and a layer index beyond the editor's few
    layers is refused (Gradio would allocate a list that long)."""
    from diffusa.data.folders import image_header

    decode, accept = editor.convert_and_format_image, editor.accept_blobs

    def checked(file: Any, flatten_on_white: bool = False) -> Any:
        if file is not None:
            source = io.BytesIO(bytes(file)) if isinstance(file, (bytes, bytearray, memoryview)) else Path(file.path)
            try:
                width, height = image_header(source)[1]  # type: ignore[arg-type]  # PIL reads files in memory
            except DiffusaError:
                raise gr.Error("the mask editor sent an image that cannot be read", print_exception=False) from None
            if width * height > MAX_EDIT_PIXELS:
                raise gr.Error(f"the mask editor sent an image of {width}x{height} pixels; at most "
                               f"{MAX_EDIT_PIXELS:,}", print_exception=False)
        return decode(file, flatten_on_white)

    def accept_blobs(data: Any) -> Any:
        meta = data.data if isinstance(getattr(data, "data", None), dict) else {}
        index = meta.get("index")
        if index not in (None, "", "null") and (not str(index).isdecimal() or int(index) >= EDITOR_LAYERS):
            raise gr.Error(f"the mask editor has at most {EDITOR_LAYERS} layers", print_exception=False)
        storage = editor.blob_storage
        while len(storage) >= EDITOR_BLOBS and meta.get("id") not in storage:
            storage.pop(next(iter(storage)))  # the oldest edit's blobs
        return accept(data)

    accept_blobs._is_server_fn = True  # type: ignore[attr-defined]  # Gradio's mark of a browser-callable method
    editor.convert_and_format_image, editor.accept_blobs = checked, accept_blobs
    return editor


def _sampling(tab: str, prompt: str, sampling: tuple[str, int], n: bool = True) -> dict[str, Any]:
    """A tab's prompt, class, sampler, steps (`sampling`: their first values, the tab's model's, `model_sampling`),
    guidance, eta, seed (with its dice) and n (unless `n` is False) controls; the generate tab's keep their short
    element ids (#prompt, #seed, #dice), the others are prefixed with the tab."""
    from diffusa.samplers import SAMPLERS

    pre = "" if tab == "generate" else f"{tab}-"
    c: dict[str, Any] = {}
    c["prompt"] = gr.Textbox(label="prompt (text models)", value=prompt, max_length=MAX_PROMPT,
                             elem_id=f"{pre}prompt")
    c["label"] = gr.Textbox(label="class: K, 'all', or K1,K2,... (blank: none)", value="")
    c["sampler"] = gr.Dropdown(sorted(SAMPLERS), value=sampling[0], label="sampler")
    c["steps"] = gr.Slider(1, MAX_STEPS, value=min(sampling[1], MAX_STEPS), step=1, label="steps",
                           elem_id=f"{pre}steps")
    c["guidance_scale"] = gr.Textbox(value="", label="guidance scale",
                                     placeholder="blank: the model's default (3 for a text model)")
    c["eta"] = gr.Textbox(value="", label="eta (ddim, euler_ancestral, dpmpp_2m_sde)",
                          placeholder="blank: the sampler's default")
    with gr.Row():
        c["seed"] = gr.Number(value=0, precision=0, label="seed", minimum=0, elem_id=f"{pre}seed")
        c["dice"] = gr.Button("random seed", size="sm", elem_id=f"{pre}dice")
    if n:
        c["n"] = gr.Slider(1, MAX_N, value=DEFAULT_N if tab == "generate" else 1, step=1, label="images")
    return c


def _source(tab: str, model: str | None, choices: list[str] | None = None) -> dict[str, Any]:
    """An edit tab's model (one of `choices`, default [model]) and image: a held-out digit by index, or an
    uploaded PNG."""
    choices = [model] if choices is None else choices
    c = {"model": gr.Dropdown(choices, value=model, label="model", allow_custom_value=True,
                              elem_id=f"{tab}-model"),
         "source": gr.Radio([DIGIT, UPLOAD], value=DIGIT, label="image", elem_id=f"{tab}-source")}
    c["digit"] = gr.Number(value=0, precision=0, minimum=0, label="held-out digit (mnist5k test split, 0..999)",
                           elem_id=f"{tab}-digit")
    c["upload"] = gr.File(label="or upload a PNG", file_types=[".png"], type="filepath", height=110,
                          elem_id=f"{tab}-upload")
    return c


def build_ui(service: Service) -> Any:
    """The page's Blocks over a service."""
    from diffusa.shipped import default_model

    texter, editor, inpainter = default_model("generate", conditioned=True), default_model("edit"), \
        default_model("inpaint")

    stops: dict[str, threading.Event] = {}

    def fail(e: BaseException) -> Exception:
        if isinstance(e, DiffusaError):
            return gr.Error(service.models.redact(str(e)), print_exception=False)
        log.error("internal error in the page", exc_info=e)
        return gr.Error("internal error; the server's log has the details", print_exception=False)

    def stream(req: Settings, inputs: Inputs | None, request: gr.Request, progress: Any) -> Iterator[tuple[Any, ...]]:
        """One run for the page: (preview, result, settings, status, gallery, ids) updates as it goes."""
        stop = threading.Event()
        key = request.session_hash or secrets.token_hex(8)
        stops[key] = stop
        try:
            for preview, gen, status in generate_updates(service, req, stop, progress, inputs):
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

    def on_generate(model: Any, prompt: Any, label: Any, sampler: Any, steps: Any, guidance: Any, eta: Any,
                    seed: Any, n: Any, request: gr.Request, progress: gr.Progress = gr.Progress()) -> Iterator[Any]:  # noqa: B008
        try:
            req = page_request(model, prompt, label, sampler, steps, guidance, eta, seed, n)
        except Exception as e:
            raise fail(e) from None
        yield from stream(req, None, request, progress)

    def on_edit(model: Any, source: Any, digit: Any, upload: Any, strength: Any, prompt: Any, label: Any,
                sampler: Any, steps: Any, guidance: Any, eta: Any, seed: Any, n: Any, request: gr.Request,
                progress: gr.Progress = gr.Progress()) -> Iterator[Any]:  # noqa: B008
        try:
            req = page_edit_request(EditRequest, model, source, digit, prompt, label, sampler, steps, guidance, eta,
                                    seed, n, strength=strength)
            inputs = page_inputs(service, req, upload)
            before = before_image(inputs, service.image_shape(req.model_name))
        except Exception as e:
            raise fail(e) from None
        for i, update in enumerate(stream(req, inputs, request, progress)):
            yield (before if i == 0 else gr.skip(), *update)

    def on_inpaint(model: Any, source: Any, digit: Any, upload: Any, mask: Any, editor: Any, jump_length: Any,
                   jump_n_sample: Any, prompt: Any, label: Any, sampler: Any, steps: Any, guidance: Any, eta: Any,
                   seed: Any, n: Any, request: gr.Request, progress: gr.Progress = gr.Progress()) -> Iterator[Any]:  # noqa: B008
        try:
            req = page_edit_request(InpaintRequest, model, source, digit, prompt, label, sampler, steps, guidance,
                                    eta, seed, n, mask=None if mask == PAINTED else mask, jump_length=jump_length,
                                    jump_n_sample=jump_n_sample)
            inputs = page_inputs(service, req, upload, editor)
            before = before_image(inputs, service.image_shape(req.model_name))
        except Exception as e:
            raise fail(e) from None
        for i, update in enumerate(stream(req, inputs, request, progress)):
            yield (before if i == 0 else gr.skip(), *update)

    def upscale_inputs(model: Any, source: Any, digit: Any, upload: Any, prompt: Any = "", label: Any = "",
                       sampler: Any = None, steps: Any = None, guidance: Any = "", eta: Any = "", seed: Any = 0,
                       noise_level: Any = "") -> tuple[UpscaleRequest, Inputs, np.ndarray]:
        """The upscale tab's request, its image (as the API reads it) and the image enlarged bicubically."""
        req = page_edit_request(UpscaleRequest, model, source, digit, prompt, label, sampler, steps, guidance, eta,
                                seed, None, noise_level=noise_level)
        inputs = page_inputs(service, req, upload)
        return req, inputs, bicubic_image(inputs, service.image_shape(req.model_name)[0], service.factor(req))

    def on_upscale(model: Any, source: Any, digit: Any, upload: Any, noise_level: Any, prompt: Any, label: Any,
                   sampler: Any, steps: Any, guidance: Any, eta: Any, seed: Any, request: gr.Request,
                   progress: gr.Progress = gr.Progress()) -> Iterator[Any]:  # noqa: B008
        try:
            req, inputs, before = upscale_inputs(model, source, digit, upload, prompt, label, sampler, steps,
                                                 guidance, eta, seed, noise_level)
        except Exception as e:
            raise fail(e) from None
        for i, update in enumerate(stream(req, inputs, request, progress)):
            yield (before if i == 0 else gr.skip(), *update)

    def source_pixels(task: str, model: Any, source: Any, digit: Any, upload: Any) -> np.ndarray:
        if source == UPLOAD:
            name = model or default_model(task)
            return read_upload(upload, mode_of(service.image_shape(name)))
        return held_out_digit(_number(digit) if isinstance(_number(digit), int) else 0)[1]

    def source_view(show: Callable[[Any, Any, Any, Any], Any], needs_model: bool = False) -> Callable[..., Any]:
        """The handler that previews a tab's chosen source (a held-out digit or an upload) through `show`; nothing
        while no upload (or, for `needs_model`, no model) is chosen; a failure as one message."""

        def on_source(model: Any, source: Any, digit: Any, upload: Any) -> Any:
            if (source == UPLOAD and not upload) or (needs_model and not model):
                return None
            try:
                return show(model, source, digit, upload)
            except Exception as e:
                raise fail(e) from None

        return on_source

    on_edit_source = source_view(lambda *a: enlarge(source_pixels("edit", *a)))
    on_inpaint_source = source_view(lambda *a: editor_value(source_pixels("inpaint", *a)))
    on_upscale_source = source_view(lambda *a: upscale_inputs(*a)[2], needs_model=True)

    def on_cancel(request: gr.Request) -> str:
        stop = stops.get(request.session_hash or "")
        if stop is None:
            return "nothing is running"
        stop.set()
        return "stopping after this step"

    def on_history() -> tuple[Any, list[str]]:
        items, ids = history_gallery(service)
        return items, ids

    def on_metrics(name: str) -> tuple[Any, str]:
        try:
            return run_metrics(service, name)
        except Exception as e:
            raise fail(e) from None

    names, ups = service.models.names(), upscalers(service)
    with gr.Blocks(title="diffusa", analytics_enabled=False) as page:
        gr.Markdown("## diffusa\nDraw, edit, inpaint and upscale digits with the shipped models or your runs. The same "
                    "settings and seed give the same images here, in the API (`/docs`), on the command line and in "
                    "Python.")
        tab: dict[str, dict[str, Any]] = {}
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                with gr.Row():
                    with gr.Column(scale=1):
                        c = tab["generate"] = {"model": gr.Dropdown([texter], value=texter,
                                                                    label="model", allow_custom_value=True)}
                        c.update(_sampling("generate", "a handwritten three",
                                           model_sampling(service, texter)))
                        with gr.Row():
                            c["go"] = gr.Button("Generate", variant="primary", elem_id="generate")
                            c["cancel"] = gr.Button("Cancel", variant="stop", elem_id="cancel")
                        c["status"] = gr.Markdown(elem_id="status")
                    with gr.Column(scale=2):
                        with gr.Row():
                            c["preview"] = gr.Image(label="predicted x0 (live)", type="numpy", format="png",
                                                    interactive=False)
                            c["result"] = gr.Image(label="result", type="filepath", format="png", interactive=False,
                                                   elem_id="result")
                        c["settings"] = gr.JSON(label="settings")
            with gr.Tab("Image to image", id="img2img", elem_id="tab-img2img"):
                with gr.Row():
                    with gr.Column(scale=1):
                        c = tab["img2img"] = _source("edit", editor)
                        c["strength"] = gr.Slider(0.01, 1, value=DEFAULT_STRENGTH, step=0.01, elem_id="edit-strength",
                                                  label="strength: the noise level to redraw from (1: pure noise)")
                        with gr.Row():
                            c["go"] = gr.Button("Edit", variant="primary", elem_id="edit-go")
                            c["cancel"] = gr.Button("Cancel", variant="stop", elem_id="edit-cancel")
                        c["status"] = gr.Markdown(elem_id="edit-status")
                        c.update(_sampling("edit", "", model_sampling(service, editor, "img2img")))
                    with gr.Column(scale=2):
                        with gr.Row():
                            c["before"] = gr.Image(label="before", type="numpy", format="png", interactive=False,
                                                   height=VIEW_HEIGHT, elem_id="edit-before")
                            c["preview"] = gr.Image(label="predicted x0 (live)", type="numpy", format="png",
                                                    interactive=False, height=VIEW_HEIGHT)
                            c["result"] = gr.Image(label="after", type="filepath", format="png", interactive=False,
                                                   height=VIEW_HEIGHT, elem_id="edit-result")
                        c["settings"] = gr.JSON(label="settings")
            with gr.Tab("Inpaint", id="inpaint", elem_id="tab-inpaint"):
                with gr.Row():
                    with gr.Column(scale=1):
                        c = tab["inpaint"] = _source("inpaint", inpainter)
                        c["mask"] = gr.Dropdown([PAINTED, *MASK_EXAMPLES], value=PAINTED, allow_custom_value=True,
                                                label="mask: painted, a half, the centre, box:X,Y,W,H, strokes",
                                                elem_id="inpaint-mask")
                        c["jump_length"] = gr.Slider(1, 50, value=DEFAULT_JUMP_LENGTH, step=1,
                                                     label="RePaint jump length (steps)")
                        c["jump_n_sample"] = gr.Slider(1, 20, value=inpaint_passes(service, inpainter), step=1,
                                                       label="RePaint passes per jump (1: no jumps)",
                                                       elem_id="inpaint-jump-n-sample")
                        with gr.Row():
                            c["go"] = gr.Button("Inpaint", variant="primary", elem_id="inpaint-go")
                            c["cancel"] = gr.Button("Cancel", variant="stop", elem_id="inpaint-cancel")
                        c["status"] = gr.Markdown(elem_id="inpaint-status")
                        c.update(_sampling("inpaint", "", model_sampling(service, inpainter, "inpaint")))
                    with gr.Column(scale=2):
                        c["editor"] = gr.ImageEditor(label="paint what to redraw (the mask: painted)", type="numpy",
                                                 image_mode="RGBA", sources=(), transforms=(), layers=False,
                                                 brush=gr.Brush(default_size=BRUSH_SIZE, colors=[BRUSH_COLOR],
                                                                color_mode="fixed"),
                                                 eraser=gr.Eraser(default_size=BRUSH_SIZE), format="png",
                                                 canvas_size=(EDITOR_SIDE, EDITOR_SIDE), elem_id="mask-editor")
                        guard_editor(c["editor"])
                        with gr.Row():
                            c["before"] = gr.Image(label="before (tinted: redrawn)", type="numpy", format="png",
                                                   interactive=False, height=VIEW_HEIGHT, elem_id="inpaint-before")
                            c["preview"] = gr.Image(label="predicted x0 (live)", type="numpy", format="png",
                                                    interactive=False, height=VIEW_HEIGHT)
                            c["result"] = gr.Image(label="after", type="filepath", format="png", interactive=False,
                                                   height=VIEW_HEIGHT, elem_id="inpaint-result")
                        c["settings"] = gr.JSON(label="settings")
            with gr.Tab("Upscale", id="upscale", elem_id="tab-upscale"):
                with gr.Row():
                    with gr.Column(scale=1):
                        c = tab["upscale"] = _source("upscale", ups[0] if ups else None, ups)
                        c["noise_level"] = gr.Textbox(value="", label="noise level of the condition",
                                                      placeholder="blank: the run's data.cond_noise",
                                                      elem_id="upscale-noise-level")
                        with gr.Row():
                            c["go"] = gr.Button("Upscale", variant="primary", elem_id="upscale-go")
                            c["cancel"] = gr.Button("Cancel", variant="stop", elem_id="upscale-cancel")
                        c["status"] = gr.Markdown("" if ups else NO_UPSCALER, elem_id="upscale-status")
                        c.update(_sampling("upscale", "", model_sampling(service, ups[0] if ups else None,
                                                                         "upscale"), n=False))
                    with gr.Column(scale=2):
                        with gr.Row():
                            c["before"] = gr.Image(label="bicubic (the input enlarged)", type="numpy", format="png",
                                                   interactive=False, height=VIEW_HEIGHT, elem_id="upscale-before")
                            c["preview"] = gr.Image(label="predicted x0 (live)", type="numpy", format="png",
                                                    interactive=False, height=VIEW_HEIGHT, elem_id="upscale-preview")
                            c["result"] = gr.Image(label="upscaled", type="filepath", format="png",
                                                   interactive=False, height=VIEW_HEIGHT, elem_id="upscale-result")
                        c["settings"] = gr.JSON(label="settings")
            with gr.Tab("Metrics", id="metrics", elem_id="tab-metrics"):
                run = gr.Dropdown(names, value=names[0], label="model or run", allow_custom_value=True)
                with gr.Row():
                    loss = gr.Image(label="loss curve", type="numpy", interactive=False)
                    numbers = gr.Markdown()
        gr.Markdown("### History (click an image to reload its settings, seed and image)")
        gallery = gr.Gallery(label="history", columns=6, height="auto", allow_preview=False, interactive=False,
                             format="png", elem_id="history")
        ids = gr.State([])

        quiet = {"concurrency_limit": None, "api_visibility": "private"}
        for task, handler in (("generate", on_generate), ("img2img", on_edit), ("inpaint", on_inpaint),
                              ("upscale", on_upscale)):
            c = tab[task]
            outputs = [c["preview"], c["result"], c["settings"], c["status"], gallery, ids]
            c["go"].click(handler, [c[k] for k in TASK_CONTROLS[task]],
                          outputs if task == "generate" else [c["before"], *outputs], concurrency_limit=1,
                          api_visibility="private")
            c["cancel"].click(on_cancel, None, c["status"], **quiet)
            c["dice"].click(lambda: secrets.randbelow(SEED_MAX), None, c["seed"], **quiet)
            # a model picked: its recommended sampler and steps (`.input`: not when a history entry sets the model)
            c["model"].input(lambda m, t=task: model_sampling(service, m, t), c["model"], [c["sampler"], c["steps"]],
                             **quiet)
            c["steps"].input(lambda m, k, s, t=task: steps_sampler(service, m, t, k, s),  # few steps: its sampler
                             [c["model"], c["steps"], c["sampler"]], c["sampler"], **quiet)
        tab["inpaint"]["model"].input(lambda m: inpaint_passes(service, m), tab["inpaint"]["model"],
                                      tab["inpaint"]["jump_n_sample"], **quiet)  # and its RePaint passes
        for task, on_source, shown in (("img2img", on_edit_source, "before"), ("inpaint", on_inpaint_source, "editor"),
                                       ("upscale", on_upscale_source, "before")):
            c = tab[task]
            where = [c["model"], c["source"], c["digit"], c["upload"]]
            c["source"].input(on_source, where, c[shown], **quiet)
            if task == "upscale":  # the input's size follows the model's
                c["model"].input(on_source, where, c[shown], **quiet)
            c["digit"].input(lambda *v, f=on_source: (DIGIT, f(v[0], DIGIT, *v[2:])), where, [c["source"], c[shown]],
                             **quiet)
            c["upload"].upload(lambda *v, f=on_source: (UPLOAD, f(v[0], UPLOAD, *v[2:])), where,
                               [c["source"], c[shown]], **quiet)

        everything = [c[k] for task in TASK_CONTROLS for c in [tab[task]]
                      for k in (*TASK_CONTROLS[task], "result", "settings", "status")]

        def on_select(ids: list[str], evt: gr.SelectData) -> list[Any]:
            try:
                values, png, record = reload(service, ids[evt.index])
            except Exception as e:
                raise fail(e) from None
            task = record.get("task") if record.get("task") in TASK_CONTROLS else "generate"
            out: list[Any] = [gr.Tabs(selected=task)]
            for t in TASK_CONTROLS:
                mine = t == task
                out += values if mine else [gr.skip()] * len(TASK_CONTROLS[t])
                out += [png, record, f"reloaded {record['id']}: run it again to draw the same images"] if mine \
                    else [gr.skip()] * 3
            edit_view = up_view = gr.skip()
            if task == "img2img":
                pixels = source_of(service.history.get(record["id"]))
                edit_view = None if pixels is None else enlarge(pixels)
            elif task == "upscale":  # the input as upscaled (a digit shrunk), kept beside the result
                pixels = _stored_pixels(service.history.get(record["id"]).part("input"))
                factor = record["settings"].get("factor")
                up_view = None if pixels is None or not isinstance(factor, int) else bicubic_image(
                    Inputs(pixels, keep={"input": pixels}), pixels.shape[-1], factor)
            return [*out, edit_view, up_view]

        def on_sources() -> tuple[Any, Any, Any]:
            """The edit tabs' first image: the default held-out digit (the upscale tab's: shrunk for its first
            model, if there is one; none if that cannot be read, its tab says why when used)."""
            try:
                pixels = held_out_digit(0)[1]
            except Exception as e:
                raise fail(e) from None
            try:
                up = upscalers(service)
                view = on_upscale_source(up[0], DIGIT, 0, None) if up else None
            except Exception:
                view = None
            return enlarge(pixels), editor_value(pixels), view

        def on_models() -> tuple[Any, ...]:
            names, ups, masks = service.models.names(), upscalers(service), inpainters(service)
            drawers = [n for n in names if n not in ups]  # an upscaler draws only on its own tab
            plain = [n for n in drawers if n not in masks]  # an inpainting model only on the inpaint tab
            return (gr.update(choices=plain), gr.update(choices=plain), gr.update(choices=drawers),
                    gr.update(choices=names),
                    gr.update(choices=ups, value=ups[0] if ups else None), "" if ups else NO_UPSCALER)

        gallery.select(on_select, ids, [tabs, *everything, tab["img2img"]["before"], tab["upscale"]["before"]],
                       **quiet)
        run.change(on_metrics, run, [loss, numbers], **quiet)
        page.load(on_history, None, [gallery, ids], **quiet)
        page.load(on_models, None, [tab["generate"]["model"], tab["img2img"]["model"], tab["inpaint"]["model"], run,
                                    tab["upscale"]["model"], tab["upscale"]["status"]], **quiet)
        page.load(on_metrics, run, [loss, numbers], **quiet)
        page.load(on_sources, None, [tab["img2img"]["before"], tab["inpaint"]["editor"], tab["upscale"]["before"]],
                  **quiet)
    page.queue(max_size=max(1, service.gate.max_queue), default_concurrency_limit=1)
    return page


__all__ = [
    "CONTROLS",
    "CSS",
    "EDIT_CONTROLS",
    "INPAINT_CONTROLS",
    "TASK_CONTROLS",
    "UPSCALE_CONTROLS",
    "before_image",
    "bicubic_image",
    "build_ui",
    "editor_value",
    "enlarge",
    "generate_updates",
    "grid_image",
    "guard_editor",
    "history_gallery",
    "inpaint_passes",
    "page_body",
    "page_edit_request",
    "page_inputs",
    "page_request",
    "painted_mask",
    "preview_grid",
    "read_upload",
    "reload",
    "run_metrics",
    "source_of",
    "upscalers",
]
