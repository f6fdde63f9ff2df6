"""`diffusa.threads.batch_call`: a Denoiser's network call without autograd, its batch cut over threads (each on one
torch thread). The slices must give the plain call's numbers (float rounding aside), keep every per-example input
with its example, leave autograd, training mode and torch's thread settings alone, and survive a fork. The speed is
benchmarks/speed.py's to measure."""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from diffusa.cond import Cond
from diffusa.nets import build_network
from diffusa.prediction import Denoiser
from diffusa.process import DiscreteDDPM
from diffusa.samplers import sample
from diffusa.threads import SLICE_ELEMENTS, batch_call, slice_count


@pytest.fixture
def two_threads() -> Iterator[None]:
    """torch at two intra-op threads for one test (the suite runs at one, where batch_call is a plain call)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _unet(**spec: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_network("unet", {"channels": 16, "attention_resolutions": [7], "image_size": 28, **spec}).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net


def test_the_slice_rule(two_threads: None) -> None:
    small, digits, tile = torch.zeros(1, 1, 28, 28), torch.zeros(64, 1, 28, 28), torch.zeros(1, 3, 256, 256)
    assert slice_count(digits) == 0  # autograd on: a plain call
    with torch.no_grad():
        assert slice_count(digits) == 2  # one slice per thread
        assert slice_count(torch.zeros(16, 1, 28, 28)) == 2  # 8 digits a slice, SLICE_ELEMENTS
        assert slice_count(torch.zeros(15, 1, 28, 28)) == 0  # not two slices' work: torch's threads
        assert slice_count(torch.zeros(7, 1, 28, 28)) == 1  # under one slice's work: one thread
        assert slice_count(small) == 1
        assert slice_count(torch.zeros(1, 3, 64, 64)) == 0  # one RGB image of 64 x 64: torch's threads
        assert slice_count(tile) == 0  # one large example: torch's intra-op threads
        assert slice_count(digits, torch.nn.Linear(1, 1).train()) == 0  # a network in training mode (dropout)
        assert slice_count(digits, torch.nn.Linear(1, 1).eval()) == 2
        torch.set_num_threads(1)
        assert slice_count(digits) == 0  # one thread: nothing to share
    assert SLICE_ELEMENTS == 8 * 28 * 28


@pytest.mark.parametrize("batch", [1, 5, 12, 16, 64])
def test_sliced_calls_equal_the_plain_call_with_every_kind_of_conditioning(two_threads: None, batch: int) -> None:
    net = _unet(num_classes=10, cond_channels=1)
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(batch, 1, 28, 28, generator=g), torch.rand(batch, generator=g) * 1000
    cond = Cond(labels=torch.randint(0, 11, (batch,), generator=g), image=torch.randn(batch, 1, 14, 14, generator=g))
    with torch.no_grad():
        plain = net(x, c, cond)
        sliced = batch_call(net, x, c, cond)
        again = batch_call(net, x, c, cond)
        assert slice_count(x, net) == (2 if batch >= 16 else 0 if batch >= 8 else 1)
    torch.testing.assert_close(sliced, plain, atol=1e-5, rtol=1e-4)
    assert torch.equal(sliced, again)  # the same slices, the same bits
    assert not sliced.requires_grad  # the workers ran without autograd, as the caller asked
    # each example kept its own label and condition image: swapping two examples' conditioning changes them
    if batch >= 16:
        swapped = Cond(labels=cond.labels.flip(0), image=cond.image.flip(0))
        with torch.no_grad():
            other = batch_call(net, x, c, swapped)
        assert (other - plain).abs().amax() > 1e-3


def test_a_text_conditional_network_and_a_shared_scalar(two_threads: None) -> None:
    """Tokens and their mask are cut with their examples; a tensor without the batch dimension is passed whole."""
    net = build_network("text_unet", {"unet": {"channels": 16, "attention_resolutions": [7], "image_size": 28},
                                      "text": {"width": 32, "depth": 1, "max_len": 6}}).eval()
    g = torch.Generator().manual_seed(2)
    x, c = torch.randn(32, 1, 28, 28, generator=g), torch.rand(32, generator=g) * 1000
    tokens = torch.randint(1, 200, (32, 6), generator=g)
    cond = Cond(tokens=tokens, token_mask=torch.rand(32, 6, generator=g) > 0.3)
    with torch.inference_mode():
        torch.testing.assert_close(batch_call(net, x, c, cond), net(x, c, cond), atol=1e-5, rtol=1e-4)
    seen: list[tuple[int, int]] = []

    def fn(xs: torch.Tensor, scale: torch.Tensor, _: Any) -> torch.Tensor:
        seen.append((xs.shape[0], scale.ndim))
        return xs * scale

    with torch.no_grad():
        out = batch_call(fn, x, torch.tensor(3.0), None)
    torch.testing.assert_close(out, x * 3)
    assert sorted(seen) == [(16, 0), (16, 0)]


def test_autograd_and_torchs_thread_settings_are_left_alone(two_threads: None) -> None:
    net = _unet()
    x, c = torch.randn(32, 1, 28, 28), torch.full((32,), 400.0)
    out = batch_call(net, x, c, None)  # autograd on: the plain call, in this thread
    out.sum().backward()
    assert net.conv_in.weight.grad is not None
    with torch.no_grad():
        batch_call(net, x, c, None)
    assert torch.get_num_threads() == 2
    counts: list[int] = []
    t = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert counts == [2]  # a thread started after the workers did not inherit their one thread


def test_sampling_is_the_same_with_and_without_slices() -> None:
    """`diffusa.sample` calls the network through batch_call: at two threads (two slices of 16) the samples equal
    those at one thread (a plain call) within float rounding, and a seed gives the same bits twice."""
    den = Denoiser.from_network(_unet(), DiscreteDDPM("linear", 1000), "eps", clip_x0=1.0)

    def draw() -> torch.Tensor:
        return sample(den, (32, 1, 28, 28), "ddim", 5, generator=torch.Generator().manual_seed(3))

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        plain = draw()
        torch.set_num_threads(2)
        sliced, again = draw(), draw()
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(sliced, plain, atol=1e-4, rtol=1e-4)
    assert torch.equal(sliced, again)


def _child(q: Any) -> None:
    torch.set_num_threads(2)
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        q.put(float((batch_call(lambda a, c, _: a * 2, x.repeat(1, 1, 4, 4), torch.zeros(32), None)).sum()))


def test_a_forked_child_makes_its_own_workers(two_threads: None) -> None:
    """A fork copies the pool object but not its threads; the child must start its own, not wait forever."""
    with torch.no_grad():
        batch_call(lambda a, c, _: a, torch.zeros(32, 1, 28, 28), torch.zeros(32), None)  # the parent's pool
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(60)
    alive = p.is_alive()
    if alive:
        p.kill()
    assert not alive, "the forked child hung on its parent's workers"
    assert p.exitcode == 0
    assert isinstance(q.get(timeout=5), float)


def test_a_conditioning_that_is_not_a_cond_goes_whole_to_one_plain_call(two_threads: None) -> None:
    """A user's dict (or other object) may hold a shared tensor as long as the batch: batch_call cannot tell it
    from a per-example one, so it does not cut it (a Cond's fields are per example by definition)."""
    seen: list[tuple[int, int]] = []

    def net(x: torch.Tensor, c: torch.Tensor, cond: dict) -> torch.Tensor:
        seen.append((x.shape[0], cond["table"].shape[0]))
        return x * cond["table"].sum()  # every example needs the whole table

    x, c = torch.randn(16, 1, 28, 28), torch.rand(16)
    table = torch.arange(16.0)
    with torch.no_grad():
        assert slice_count(x) == 2
        out = batch_call(net, x, c, {"table": table})
    assert seen == [(16, 16)]  # one call, the table whole
    torch.testing.assert_close(out, x * table.sum())


def test_a_sliced_draw_reports_the_network_evaluations_it_spent_not_the_slices(two_threads: None) -> None:
    """The pipeline's NFE counts a call cut into slices over threads once: 20 samples (two slices) at 4 DDIM
    steps are 4 evaluations, as at one thread."""
    from diffusa.pipelines.sampling import network_calls

    net = _unet()
    den = Denoiser.from_network(net, DiscreteDDPM("cosine", 100), "eps")
    x = torch.randn(20, 1, 28, 28)
    with torch.no_grad():
        assert slice_count(x, net) == 2
        with network_calls(net) as calls:
            sample(den, x.shape, "ddim", 4, x_T=x, generator=torch.Generator().manual_seed(0))
    assert calls[0] == 4
    torch.set_num_threads(1)
    with torch.no_grad(), network_calls(net) as calls:
        sample(den, x.shape, "ddim", 4, x_T=x, generator=torch.Generator().manual_seed(0))
    assert calls[0] == 4
