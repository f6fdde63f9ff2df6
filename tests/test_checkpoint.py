"""Checkpoints: safetensors + JSON, written atomically, validated on load."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import diffusa.checkpoint as ckpt
from diffusa.checkpoint import (
    load_json,
    load_state_dict_strict,
    load_tensors,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_json,
    save_tensors,
)
from diffusa.errors import DiffusaError
from diffusa.runs import load_run, read_run_meta


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


# -- tensors and JSON --------------------------------------------------------------------------


def test_tensors_round_trip(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "w": torch.randn(3, 4, generator=g),
        "half": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(2, 2, generator=g).bfloat16(),
        "idx": torch.arange(7),
        "scalar": torch.tensor(3.5),
        "view": torch.randn(4, 6, generator=g)[:, ::2],  # non-contiguous
        "flag": torch.tensor([True, False]),
    }
    path = tmp_path / "sub" / "t.safetensors"
    save_tensors(path, tensors, {"step": "12"})
    back = load_tensors(path)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"step": "12"}
    assert _leftovers(path.parent) == []


def test_json_round_trip(tmp_path: Path) -> None:
    obj = {"a": 1, "b": [1.5, None, True], "c": {"nested": "α-β"}, "big": 2**40}
    save_json(tmp_path / "x.json", obj)
    assert load_json(tmp_path / "x.json") == obj
    save_json(tmp_path / "x.json", {"replaced": 1})  # overwrite in place
    assert load_json(tmp_path / "x.json") == {"replaced": 1}
    assert _leftovers(tmp_path) == []


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.safetensors"
    save_tensors(path, {"w": torch.ones(3)})
    before = path.read_bytes()

    real_write_bytes = Path.write_bytes

    def half_write(self: Path, data: bytes) -> int:
        real_write_bytes(self, data[:10])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_tensors(path, {"w": torch.zeros(3)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_written_files_respect_umask(tmp_path: Path) -> None:
    """Checkpoints get the same permissions as any other file the user writes (not mkstemp's 0600),
    so a run folder shared with others stays readable."""
    (tmp_path / "plain.txt").write_text("x")
    expected = (tmp_path / "plain.txt").stat().st_mode & 0o777
    save_tensors(tmp_path / "a.safetensors", {"w": torch.ones(2)})
    save_json(tmp_path / "a.json", {"k": 1})
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == expected
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == expected


@pytest.mark.parametrize("damage", ["truncated", "header_only", "garbage", "empty"])
def test_damaged_safetensors(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "model.safetensors"
    save_tensors(path, {"w": torch.randn(64, 64)})
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "header_only":
        path.write_bytes(data[:12])
    elif damage == "garbage":
        path.write_bytes(os.urandom(500))
    else:
        path.write_bytes(b"")
    with pytest.raises(DiffusaError, match=r"model\.safetensors"):
        load_tensors(path)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DiffusaError, match="does not exist"):
        load_tensors(tmp_path / "nope.safetensors")
    with pytest.raises(DiffusaError, match="does not exist"):
        load_json(tmp_path / "nope.json")


@pytest.mark.parametrize("text, match", [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"),
                                         (b"\xff\xfe\x00", "not valid JSON")])
def test_bad_json(tmp_path: Path, text: str | bytes, match: str) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DiffusaError, match=match):
        load_json(path)


def test_load_state_dict_strict_messages(tmp_path: Path) -> None:
    net = torch.nn.Linear(3, 2)
    sd = net.state_dict()
    with pytest.raises(DiffusaError, match="missing 1"):
        load_state_dict_strict(net, {"weight": sd["weight"]}, tmp_path / "w")
    with pytest.raises(DiffusaError, match="unexpected 1"):
        load_state_dict_strict(net, {**sd, "extra": torch.ones(1)}, tmp_path / "w")
    with pytest.raises(DiffusaError, match="shape"):
        load_state_dict_strict(net, {**sd, "bias": torch.zeros(5)}, tmp_path / "w")
    other = torch.nn.Linear(3, 2)
    load_state_dict_strict(other, sd, tmp_path / "w")
    assert torch.equal(other.weight, net.weight)


# -- run folders -------------------------------------------------------------------------------


def test_load_run(moons_run: Path) -> None:
    run = load_run(moons_run)
    assert run.data_shape == (2,) and not run.is_image
    meta = read_run_meta(moons_run)
    assert meta["format"] == ckpt.FORMAT and meta["format_version"] == ckpt.FORMAT_VERSION
    weights = load_tensors(moons_run / "model.safetensors")
    for k, v in run.net.state_dict().items():
        assert torch.equal(v, weights[k])


def test_missing_run_folder(tmp_path: Path) -> None:
    with pytest.raises(DiffusaError, match="does not exist"):
        load_run(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffusaError, match=r"config\.json"):
        load_run(tmp_path / "empty")


def test_truncated_model_file(moons_run: Path, tmp_path: Path) -> None:
    run = _copy_run(moons_run, tmp_path / "run")
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DiffusaError, match=r"model\.safetensors"):
        load_run(run)


def test_missing_model_file(moons_run: Path, tmp_path: Path) -> None:
    run = _copy_run(moons_run, tmp_path / "run")
    (run / "model.safetensors").unlink()
    with pytest.raises(DiffusaError, match=r"model\.safetensors"):
        load_run(run)


def test_foreign_model_file_other_keys(moons_run: Path, digits_run: Path, tmp_path: Path) -> None:
    run = _copy_run(moons_run, tmp_path / "run")
    shutil.copy(digits_run / "model.safetensors", run / "model.safetensors")
    with pytest.raises(DiffusaError, match="another model"):
        load_run(run)


def test_foreign_model_file_other_shapes(moons_run: Path, tmp_path: Path) -> None:
    run = _copy_run(moons_run, tmp_path / "run")
    tensors = load_tensors(run / "model.safetensors")
    name = next(k for k, v in tensors.items() if v.ndim == 2)
    tensors[name] = torch.zeros(tensors[name].shape[0] + 1, tensors[name].shape[1])
    save_tensors(run / "model.safetensors", tensors)
    with pytest.raises(DiffusaError, match=name.replace(".", r"\.")):
        load_run(run)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(format_version=ckpt.FORMAT_VERSION + 1), "format version"),
    (lambda m: m.pop("format_version"), "format version"),
    (lambda m: m.update(format="something-else"), "not a diffusa run"),
    (lambda m: m.pop("network"), "network"),
])
def test_config_from_another_version_or_damaged(moons_run: Path, tmp_path: Path, edit, match: str) -> None:
    run = _copy_run(moons_run, tmp_path / "run")
    meta = json.loads((run / "config.json").read_text())
    edit(meta)
    (run / "config.json").write_text(json.dumps(meta))
    with pytest.raises(DiffusaError, match=match):
        load_run(run)


# -- optimizer state ---------------------------------------------------------------------------


def _net_and_opt(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    return net, opt


def _step(net: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=g)
    loss = net(x).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_optimizer_state_round_trip_gives_identical_next_step(tmp_path: Path) -> None:
    net, opt = _net_and_opt(0)
    for s in range(3):
        _step(net, opt, s)
    tensors, meta = optimizer_to_tensors(opt)
    save_tensors(tmp_path / "opt.safetensors", tensors)
    save_json(tmp_path / "opt.json", meta)
    save_tensors(tmp_path / "net.safetensors", net.state_dict())

    net2, opt2 = _net_and_opt(1)  # different initial weights, fresh optimizer
    load_state_dict_strict(net2, load_tensors(tmp_path / "net.safetensors"), tmp_path / "net.safetensors")
    optimizer_from_tensors(opt2, load_tensors(tmp_path / "opt.safetensors"), load_json(tmp_path / "opt.json"))
    assert opt2.param_groups[0]["betas"][0] == 0.8 and opt2.param_groups[0]["weight_decay"] == 0.1

    for s in (3, 4):
        _step(net, opt, s)
        _step(net2, opt2, s)
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(a, b)
    t1, _ = optimizer_to_tensors(opt)
    t2, _ = optimizer_to_tensors(opt2)
    assert set(t1) == set(t2) and all(torch.equal(t1[k], t2[k]) for k in t1)


def test_optimizer_state_for_another_network(tmp_path: Path) -> None:
    net, opt = _net_and_opt(0)
    _step(net, opt, 0)
    tensors, meta = optimizer_to_tensors(opt)
    other = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(DiffusaError, match="optimizer state"):
        optimizer_from_tensors(other, tensors, meta)
