"""Batch shards on CPU threads (diffusa.engine.shards): the summed shard gradients equal the full batch's, the merged
StepLoss is the batch's, a sharded training is reproducible and resumes exactly, and the rules of the default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import DIGITS_OVERRIDES, train_run
from torch import nn

from diffusa.checkpoint import load_tensors
from diffusa.engine.shards import Shards, auto_shards, merge
from diffusa.engine.task import StepLoss
from diffusa.errors import DiffusaError


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.SiLU(), nn.Conv2d(4, 1, 3, padding=1)).double()


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("k", [2, 3])
def test_shard_gradients_sum_to_the_full_batch_gradient(k: int, weighted: bool) -> None:
    net = tiny_net()
    x = torch.randn(13, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))  # 13: uneven
    w_all = torch.linspace(0.5, 2.0, 13, dtype=torch.float64)

    def loss_fn(idx: torch.Tensor, xs: torch.Tensor, g: torch.Generator) -> StepLoss:
        losses = ((net(xs) - xs.flip(-1)) ** 2).mean(dim=(1, 2, 3))
        return StepLoss(losses, w_all[idx] if weighted else None, {"m": losses.detach().mean()}, extra=idx * 1.0)

    params = list(net.parameters())
    full = loss_fn(torch.arange(13), x, torch.Generator())
    losses = full.losses.float()  # as the engine reads a task's losses
    ref_loss = (losses * full.weights).mean() if weighted else losses.mean()
    ref = torch.autograd.grad(ref_loss, params)
    shards = Shards(k, params, None)
    try:
        loss, result, grads = shards(loss_fn, torch.arange(13), x, seed=5)
    finally:
        shards.close()
    assert torch.allclose(loss, ref_loss.detach(), rtol=1e-6)  # float32 sums in another order
    for a, b in zip(grads, ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-9)
    assert torch.allclose(result.losses, full.losses.detach(), rtol=1e-12)  # in batch order
    assert torch.equal(result.extra, torch.arange(13) * 1.0)  # concatenated in shard order
    assert torch.allclose(torch.as_tensor(result.logs["m"]), full.losses.mean(), rtol=1e-12)  # size-weighted mean


def test_merge_weights_each_log_by_shard_size() -> None:
    a = StepLoss(torch.tensor([1.0, 2.0, 3.0]), torch.ones(3), {"x": 2.0}, extra=None)
    b = StepLoss(torch.tensor([5.0]), torch.full((1,), 2.0), {"x": 6.0}, extra=None)
    m = merge([a, b], [3, 1])
    assert m.losses.tolist() == [1, 2, 3, 5] and m.weights.tolist() == [1, 1, 1, 2] and m.logs["x"] == 3.0
    assert m.extra is None


def test_auto_shards_rules() -> None:
    net = tiny_net()
    kw = {"cpu": True, "world": 1, "scaler": False, "model": net, "shardable": True}
    assert auto_shards(2, 64, **kw) == 2
    assert auto_shards(4, 16, **kw) == 2  # at least 8 examples a shard
    assert auto_shards(1, 64, **kw) == 1
    assert auto_shards(2, 64, **{**kw, "cpu": False}) == 1
    assert auto_shards(2, 64, **{**kw, "world": 2}) == 1
    assert auto_shards(2, 64, **{**kw, "scaler": True}) == 1
    assert auto_shards(2, 64, **{**kw, "shardable": False}) == 1
    assert auto_shards(2, 64, **{**kw, "model": nn.Sequential(net, nn.Dropout(0.1))}) == 1


SHARDED = [*DIGITS_OVERRIDES, "train.shards=2", "train.checkpoint_every=10", "train.log_every=5"]


def test_a_sharded_training_is_reproducible_and_resumes_exactly(tmp_path: Path) -> None:
    a = train_run(tmp_path / "a", SHARDED)
    b = train_run(tmp_path / "b", SHARDED)
    wa, wb = load_tensors(a / "model.safetensors"), load_tensors(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    state = json.loads((a / "train_state.json").read_text())
    assert state["shards"] == 2
    one = train_run(tmp_path / "one", [*DIGITS_OVERRIDES, "train.shards=1"])
    assert json.loads((one / "train_state.json").read_text())["shards"] == 1
    w1 = load_tensors(one / "model.safetensors")
    assert not all(torch.equal(wa[k], w1[k]) for k in wa)  # other draws: another (equally valid) run
    loss_a = [json.loads(line)["loss"] for line in (a / "log.jsonl").read_text().splitlines()]
    assert all(0 < v < 10 for v in loss_a)

    from diffusa.config import load_config
    from diffusa.train import diffusion_engine

    def stop(engine) -> None:
        if engine.step == 13:
            raise KeyboardInterrupt

    cfg = load_config(overrides=SHARDED)
    with pytest.raises(KeyboardInterrupt):
        diffusion_engine(cfg, tmp_path / "cut", progress=False).fit(on_step=stop)
    cut = diffusion_engine(load_config(overrides=SHARDED), tmp_path / "cut", resume=True, progress=False).fit()
    wc = load_tensors(cut / "model.safetensors")
    assert all(torch.equal(wa[k], wc[k]) for k in wa)


def test_shards_where_they_cannot_run_are_refused(tmp_path: Path) -> None:
    from diffusa.config import load_config
    from diffusa.train import diffusion_engine

    engine = diffusion_engine(load_config(overrides=[*DIGITS_OVERRIDES, "train.shards=2",
                                                     'train.precision="fp16"']), tmp_path / "r", progress=False)
    with pytest.raises(DiffusaError, match=r"train\.shards 2"):
        engine.fit()
    with pytest.raises(DiffusaError, match=r"train\.shards"):
        diffusion_engine(load_config(overrides=[*DIGITS_OVERRIDES, "train.shards=-1"]), tmp_path / "s",
                         progress=False)
