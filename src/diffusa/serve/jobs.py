"""Generations, one at a time, behind a bounded queue; loaded pipelines kept for the next request.

`Gate.admit()` takes one of max_queue + 1 places (the running generation and those waiting) or answers
`Busy` (429) at once: the queue never grows. `Gate.running()` is the lock that lets one generation use the
cores at a time, so two users do not each run at a fraction of the speed. The REST API and the web page share
one gate, so the queue bounds both together. A request waiting with a `gone` event (the API's: set when its client
disconnects) stops waiting once it is set and raises `Gone`: nothing runs, nothing is recorded, its place comes back.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusa.pipelines import Pipeline, Samples, StepCallback
from diffusa.runs import guide_inside
from diffusa.serve.history import Entry, History
from diffusa.serve.images import Inputs
from diffusa.serve.limits import DEFAULT_QUEUE, MAX_QUEUE, Busy
from diffusa.serve.models import Models
from diffusa.serve.schema import R, Settings, parse_request

CACHED = 2  # pipelines kept loaded (the two shipped models, or a shipped model and a run)
POLL = 0.1  # seconds between looks at a waiting request's `gone` event

# watch(pipe) -> the step callback of a generation with that pipeline (the page's progress and previews)
Watch = Callable[[Pipeline], StepCallback | None]


class Gone(Exception):  # noqa: N818 (control flow: a client that left, not an error)
    """The client of a waiting request left before its turn: nothing was run or recorded."""


class Gate:
    """At most max_queue requests waiting behind the one that runs; one runs at a time."""

    def __init__(self, max_queue: int = DEFAULT_QUEUE) -> None:
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or not 0 <= max_queue <= MAX_QUEUE:
            from diffusa.errors import DiffusaError

            raise DiffusaError(f"--max-queue must be an integer in 0..{MAX_QUEUE}, got {max_queue!r}")
        self.max_queue = max_queue
        self._count = 0
        self._count_lock = threading.Lock()
        self._run = threading.Lock()

    @property
    def admitted(self) -> int:
        """Requests in the server now: running and waiting."""
        return self._count

    @contextmanager
    def admit(self) -> Iterator[None]:
        """A place in the queue for the duration of the block, or Busy at once."""
        with self._count_lock:
            if self._count > self.max_queue:
                raise Busy(self.max_queue)
            self._count += 1
        try:
            yield
        finally:
            with self._count_lock:
                self._count -= 1

    @contextmanager
    def running(self, gone: threading.Event | None = None) -> Iterator[None]:
        """The one generation that runs (blocks until the previous one is done). With `gone`: raises Gone instead of
        running once it is set, while waiting (looked at every POLL seconds) or at the turn."""
        if gone is None:
            self._run.acquire()
        else:
            while not self._run.acquire(timeout=POLL):
                if gone.is_set():
                    raise Gone
            if gone.is_set():
                self._run.release()
                raise Gone
        try:
            yield
        finally:
            self._run.release()


@dataclass
class Generation:
    """What a request drew, and its history entry (None when it was stopped before its last step)."""

    samples: Samples
    entry: Entry | None


class Service:
    """Models, pipelines, the gate and the history: what the API and the page call to generate."""

    def __init__(self, models: Models, history: History, max_queue: int = DEFAULT_QUEUE,
                 device: str = "cpu") -> None:
        from diffusa.pipelines.sampling import check_device

        self.models, self.history, self.gate = models, history, Gate(max_queue)
        self.device = check_device(device)
        self._pipes: OrderedDict[tuple[Any, ...], Pipeline] = OrderedDict()

    def pipeline(self, name: str) -> Pipeline:
        """The pipeline of a model name (loaded again when its files changed); call inside `gate.running()`."""
        from diffusa.runs import load_run

        path = self.models.resolve(name)
        key = (name, str(path), *_stamp(path))
        pipe = self._pipes.pop(key, None)
        if pipe is None:
            pipe = Pipeline(load_run(path, self.device), name, self.device)
        self._pipes[key] = pipe
        while len(self._pipes) > CACHED:
            self._pipes.popitem(last=False)
        return pipe

    def image_shape(self, name: str) -> tuple[int, ...]:
        """(C, H, W) of the images a model draws, from its config.json (a latent model's decoded images)."""
        return self.models.image_shape(self.models.resolve(name))

    def defaults(self, name: str, task_sampler: str | None = None, steps: int | None = None) -> tuple[str, int]:
        """The sampler and steps a request for model `name` gets where it leaves them out, from its config.json
        (`resolve_sampling`, as the pipeline resolves them: its recommendation, else the global defaults;
        `task_sampler`, a task's own default sampler, ahead of the recommendation); `steps` given: the sampler at
        those steps (a recommendation's "few_steps" one at few)."""
        from diffusa.pipelines.sampling import resolve_sampling

        cfg = self.models.config(self.models.resolve(name))
        sampler, steps, _ = resolve_sampling(cfg, None, steps, task_sampler=task_sampler)
        return sampler, steps

    def resolved(self, req: R) -> R:
        """`req` with the sampler and steps it left out filled in as the pipeline would fill them (`defaults`), and
        checked again against the limits (a 422 naming the field, e.g. inpainting's reverse steps): what runs, what
        the history records and what the progress bar counts."""
        if req.sampler is not None and req.steps is not None:
            return req
        sampler, steps = self.defaults(req.model_name, req.task_sampler, req.steps)
        body = {**req.model_dump(exclude_unset=True), "sampler": sampler if req.sampler is None else req.sampler,
                "steps": steps if req.steps is None else req.steps}
        return parse_request(body, type(req))

    def factor(self, req: Settings) -> int:
        """An upscale's super-resolution factor, from its model's config.json (400 for a model that is not a
        super-resolution model, before anything is loaded); 0 for the other tasks."""
        if req.task != "upscale":
            return 0
        return self.models.super_resolution(self.models.resolve(req.model_name), req.model_name)

    def run(self, req: Settings, source: str, watch: Watch | None = None, inputs: Inputs | None = None,
            gone: threading.Event | None = None) -> Generation:
        """Do what `req` asks (call inside `gate.admit()`): the pipeline call — pipe(...) for a generation,
        pipe.img2img / pipe.inpaint / pipe.upscale with the image (and mask) of `inputs` for an edit or an upscale —
        then the history entry.
        `watch(pipe)` gives the step callback; a callback that stops the drawing early leaves no entry.
        `gone` set before the turn comes: Gone, without loading or running anything (`Gate.running`)."""
        self.models.resolve(req.model_name)  # a refused name is answered before waiting for the lock
        req = self.resolved(req)  # a no-op for a request the API or the page resolved already
        if (req.task == "generate") != (inputs is None):
            raise ValueError(f"{req.task}: inputs {'missing' if inputs is None else 'not taken'}")  # a bug, not a user
        with self.gate.running(gone):
            pipe = self.pipeline(req.model_name)
            call = pipe if inputs is None else getattr(pipe, req.task)
            args = () if inputs is None else inputs.args
            res = call(*args, **req.pipeline_kwargs(), callback=None if watch is None else watch(pipe))
            entry = None
            if res.stopped_at is None:
                entry = self.history.add(res, req.record(), source, req.task, None if inputs is None else inputs.keep)
        return Generation(res, entry)


def _stamp(path: Path) -> tuple[int, ...]:
    """Size, modification time and inode of a run's files, of its own autoguidance guide's (config.json "sampling"
    "guide") and of the snapshots it kept (the guide when it names none): a retrained run, or one given a new guide,
    is loaded afresh."""
    files = [path / "config.json", path / "model.safetensors"]
    try:
        files += sorted((path / "snapshots").glob("step_*.safetensors"))
    except OSError:
        pass
    try:
        guide = json.loads((path / "config.json").read_text(encoding="utf-8")).get("sampling", {}).get("guide")
    except (OSError, ValueError, AttributeError, RecursionError):  # not a config: the load refuses it, in one line
        guide = None
    if guide_inside(guide):  # only a guide inside the folder (the load refuses any other)
        files += [path / guide, path / guide / "config.json", path / guide / "model.safetensors"]
    out: list[int] = []
    for file in files:
        try:
            st = file.stat()
            out += [st.st_mtime_ns, st.st_size, st.st_ino]
        except (OSError, ValueError):
            out += [0, 0, 0]
    return tuple(out)


__all__ = ["CACHED", "POLL", "Gate", "Generation", "Gone", "Service", "Watch"]
