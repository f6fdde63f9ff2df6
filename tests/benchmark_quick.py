"""The benchmark scripts' quick mode, run and checked (shared by tests/test_benchmarks*.py: two files, so the two
test workers take half each)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def check_quick_mode(script: str, tmp_path: Path) -> None:
    """Run benchmarks/SCRIPT --quick in tmp_path and check the table (and figures) it writes."""
    out = tmp_path / "table.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = out.read_text()
    assert table.count("|") > 10  # a markdown table with rows
    if script == "speed.py":
        assert "training step" in table and "sampling" in table and "peak RSS" in table and "x |" in table
    elif script == "streaming.py":
        assert "resident" in table and "streaming" in table and "steps/s" in table
    elif script == "time_to_quality.py":
        assert "diffusers FD" in table and "diffusa FD" in table
    elif script == "iddpm_repro.py":
        assert "L_hybrid, learned Sigma" in table and "bits/dim" in table and "FD 4" in table
        for fig in ("iddpm_terms", "iddpm_learning_curves", "iddpm_fd_vs_steps"):
            assert (tmp_path / "quick" / "img" / f"{fig}.png").stat().st_size > 1000
    elif script == "nfe.py":
        assert "diffusers DPMSolverMultistepScheduler (trailing)" in table and "rk45 tol0.01" in table
        assert "| flow | " in table and (tmp_path / "quick" / "img" / "nfe.png").stat().st_size > 1000
    elif script == "guidance.py":
        assert "classifier-free (w)" in table and "held-out templates" in table
        assert "worst held-out template" in table and "| text, n 20 | 3 | 2 |" in table
        assert (tmp_path / "quick" / "img" / "guidance_tradeoff.png").stat().st_size > 1000
    elif script == "autoguidance.py":
        assert "(none: the run alone) | 1 | 3 |" in table and "| step_2 | 2 | 6 |" in table
        assert (tmp_path / "quick" / "img" / "autoguidance.png").stat().st_size > 1000
    elif script == "ldm.py":
        assert "seconds per training step" in table and "conditional accuracy, held-out templates" in table
        assert (tmp_path / "quick" / "img" / "ldm_fd_vs_time.png").stat().st_size > 1000
        assert "time / pixel model" in table and "latent space, a third of it" in table
    elif script == "two_processes.py":
        assert "2-D training (moons) beside generate" in table and "training B beside another" in table
    elif script == "serve_load.py":  # exit 0 already means: every request answered, no 5xx, still serving
        assert "| answered anything else (server errors) | 0 |" in table and "| requests | 20 |" in table
        assert "| every request answered, no server error, queue bounded | yes, yes, yes |" in table
        assert "CLI / API" in table and "| the API's PNG is the CLI's, byte for byte | yes | |" in table
    elif script == "memory.py":
        assert "grad checkpoint" in table and "bf16" in table
    elif script == "toys.py":  # every sampler at 10 NFE, a built-in toy and a user-like array
        assert "| moons | edm |" in table and "| ring8 | edm |" in table and "dpmpp_2m_sde" in table
        assert "worst / geometric mean" in table
        assert "Over 2 seeds (RK45: 2)" in table and "| ring8 | edm | " in table.split("Over 2 seeds")[1]
        assert "unipc@logsnr-unit/10" in table and "sets within 2x" in table
    elif script == "distill_mnist.py":  # every stage, the bars, the figure and the sample grid
        for part in ("**Teacher**", "| DPM-Solver++(2M) SDE |", "**consistency distillation (CD)**",
                     "**consistency training (iCT)**", "**2-rectified flow (reflow)**", "| consistency | 4 |",
                     "| Euler | 1 |", "S(2-rectified)", "Speed-up of one step", "1 NFE: FD",
                     "**2-rectified flow distilled to one step**", "one-step distillation of the 2-rectified flow"):
            assert part in table, part
        for fig in ("distill_fd_nfe", "distill_grid"):
            assert (tmp_path / "quick" / "img" / f"{fig}.png").stat().st_size > 1000
        assert sorted(p.name for p in (tmp_path / "quick" / "raw").iterdir()) == [
            f"distill_mnist_{s}.json" for s in ("cd", "ict", "onestep", "reflow", "teacher")]
    elif script == "editing.py":  # the six masks, both ceilings, RePaint and the tiny mask-conditioned model's rows
        for mask in ("top", "bottom", "left", "right", "center", "strokes"):
            assert f"| {mask} | mnist-pixel | RePaint 2x2 |" in table
            assert f"| {mask} | mask-conditioned model | replacement, ancestral (default) | 4 |" in table
            assert f"| {mask} | mask-conditioned model | no replacement, DPM-Solver++(2M) | 4 |" in table
            assert f"| {mask} | mask-conditioned model | replacement, ancestral, mask guidance w = 2 | 4 |" in table
            assert f"| {mask} | mask-conditioned model | replacement, ancestral, autoguidance w = 2 | 8 |" in table
        assert "classifier, all held-out" in table and "| none |" in table and "not yet measured" not in table
        assert (tmp_path / "quick" / "img" / "editing_inpaint_model.png").stat().st_size > 1000
        assert (tmp_path / "quick" / "img" / "editing_inpaint_guidance.png").stat().st_size > 1000
    elif script == "sketches.py":  # both roughnesses, the recommendation, both figures
        assert "| rough | (the sketch) | 0 | 0 |" in table and "| rougher | mnist-pixel | 0.6 | 3 |" in table
        assert "recommended strength" in table
        for fig in ("sketch_strength", "sketch_tradeoff"):
            assert (tmp_path / "quick" / "img" / f"{fig}.png").stat().st_size > 1000
    elif script == "inpaint_seeds.py":  # each seed's row (20 digits, 2 ancestral steps, mask guidance batched: NFE 2)
        assert "| 0 | " in table and "| 1 | " in table and "| 2 |" in table and "| **mean of 2** |" in table
        assert "| target (ceiling - 3 points) | 0.785 |" in table and "| the real digits themselves | |" in table
    elif script == "inpaint_posterior.py":  # the box, one classifier: its ceiling, the bar, posterior sampling
        assert "| center | " in table and "posterior sampling, calibrated" in table
    else:
        assert "moons" in table
