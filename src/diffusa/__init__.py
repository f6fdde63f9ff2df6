"""diffusa: diffusion models in one currency (noise levels alpha, sigma).

    import torch, diffusa
    run = diffusa.load_run("runs/mnist")
    x = diffusa.sample(run.denoiser, (16, 1, 28, 28), sampler="ddim", steps=50,
                       generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from diffusa._version import __version__
from diffusa.errors import DiffusaError
from diffusa.prediction import Denoiser, Prediction
from diffusa.process import DiscreteDDPM, Process
from diffusa.runs import Run, load_run
from diffusa.samplers import make_grid, sample

__all__ = ["Denoiser", "DiffusaError", "DiscreteDDPM", "Prediction", "Process", "Run", "__version__",
           "load_run", "make_grid", "sample"]
