"""diffusa: diffusion models in one currency (noise levels alpha, sigma).

    import diffusa
    pipe = diffusa.load("mnist-text")                  # a shipped model, or any run folder
    images = pipe("a handwritten seven", n=16, seed=1)
    images.save("seven.png")

The layers below stay open: `diffusa.load_run(path).denoiser` is a Denoiser, and
`diffusa.sample(denoiser, shape, sampler="ddim", steps=50, generator=g)` runs any sampler on it.
"""

from __future__ import annotations

from diffusa.threads import set_wait_policy

set_wait_policy()  # first, before anything imports torch: OpenMP reads its wait policy once, as torch loads

from diffusa._version import __version__  # noqa: E402
from diffusa.cond import Cond  # noqa: E402
from diffusa.errors import DiffusaError  # noqa: E402
from diffusa.pipelines import Pipeline, Samples, load  # noqa: E402
from diffusa.prediction import Denoiser, Prediction  # noqa: E402
from diffusa.process import DiscreteDDPM, Process  # noqa: E402
from diffusa.runs import Run, load_run  # noqa: E402
from diffusa.samplers import make_grid, sample  # noqa: E402

__all__ = ["Cond", "Denoiser", "DiffusaError", "DiscreteDDPM", "Pipeline", "Prediction", "Process", "Run",
           "Samples", "__version__", "load", "load_run", "make_grid", "sample"]
