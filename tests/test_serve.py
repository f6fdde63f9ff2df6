"""`diffusa serve`: the REST API and the page's handlers over the pipelines — bit-identical to Python and the CLI,
every hostile request refused with a 4xx naming the problem (and nothing outside the history written), the bounded
queue answering 429, the token required with --listen, the history surviving a restart, and a real uvicorn start.

The runs under --runs are copies of the shipped pixel model, and of conftest's tiny 2x upscaler (`sr`, trained once
per session, ~10 s) for the upscaling route and tab. Small n and steps throughout.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("gradio")

from fastapi.testclient import TestClient

import diffusa
from diffusa.errors import DiffusaError
from diffusa.serve import create_app
from diffusa.serve.limits import MAX_BODY, Busy, Refusal
from diffusa.shipped import resolve_model

BASE = "http://127.0.0.1:7860"
TOKEN = "test-token-0123456789abcdef"


class Payload:
    """Unpickling this writes a file: a pickle renamed model.safetensors must never be unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return open, (str(self.marker), "w")


def copy_run(src: Path, dest: Path, guide: bool = True) -> Path:
    """A copy of a run folder's config and weights (and mnist-pixel's autoguidance guide/); guide=False leaves the
    guide out and drops its recommendation (a run that guides only with a snapshot it kept)."""
    dest.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(src / name, dest / name)
    if (src / "guide").is_dir() and guide:
        shutil.copytree(src / "guide", dest / "guide")
    elif not guide:
        meta = json.loads((dest / "config.json").read_text())
        for key in ("autoguidance", "guide"):
            meta.get("sampling", {}).pop(key, None)
        (dest / "config.json").write_text(json.dumps(meta))
    return dest


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """runs/ (pixel: a copy of mnist-pixel with a loss curve and metrics; evil: a pickle named model.safetensors;
    link-out: a link to a run outside runs/; link-in: a link to runs/pixel), outside/, and the history folder."""
    from PIL import Image

    base = tmp_path_factory.mktemp("serve")
    runs, outside = base / "runs", base / "outside"
    pixel = copy_run(resolve_model("mnist-pixel"), runs / "pixel")
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(pixel / "loss.png")
    (pixel / "metrics.json").write_text(json.dumps({"fd": 12.5, "fd_floor": 1.5, "kid": 0.01, "run": "pixel"}))
    evil = runs / "evil"
    evil.mkdir()
    shutil.copyfile(pixel / "config.json", evil / "config.json")
    (evil / "model.safetensors").write_bytes(pickle.dumps(Payload(base / "pwned")))
    copy_run(resolve_model("mnist-pixel"), outside / "secret")
    (runs / "link-out").symlink_to(outside / "secret", target_is_directory=True)
    (runs / "link-in").symlink_to(pixel, target_is_directory=True)
    (runs / "notes.txt").write_text("not a run")
    return {"base": base, "runs": runs, "outside": outside, "history": base / "history", "pixel": pixel}


@pytest.fixture(scope="module")
def client(place: dict[str, Path]) -> Any:
    app = create_app(runs=place["runs"], history=place["history"], max_queue=1)
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def sr(place: dict[str, Path], sr_run: Path) -> Path:
    """runs/sr: a copy of conftest's tiny 2x upscaler (8x8 digits from 4x4 inputs)."""
    return copy_run(sr_run, place["runs"] / "sr")


def tree(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file and link under the roots (links not followed): size and modification time."""
    out = {}
    for root in roots:
        for top, dirs, files in os.walk(root):
            for name in dirs + files:
                st = os.lstat(Path(top) / name)
                out[str(Path(top) / name)] = (st.st_size, st.st_mtime_ns)
    return out


def post(client: TestClient, body: Any, **kw: Any) -> Any:
    return client.post("/api/generate", json=body, **kw)


# -- bit-identity --------------------------------------------------------------------------------------------------
def test_png_is_the_cli_bytes_and_python_samples(client: TestClient, tmp_path: Path) -> None:
    body = {"model": "mnist-text", "prompt": "a 3", "n": 2, "steps": 3, "seed": 7}
    place = client.app.state.service.history.folder.parent
    before = {k: v for k, v in tree(place).items() if "history" not in k}
    r = post(client, body)
    assert r.status_code == 200, r.text
    assert {k: v for k, v in tree(place).items() if "history" not in k} == before  # written: the history only
    assert r.headers["content-type"] == "image/png"
    settings = json.loads(r.headers["x-diffusa-settings"])
    res = diffusa.load("mnist-text")("a 3", n=2, steps=3, seed=7)
    assert settings == res.settings
    assert r.content == res.save(tmp_path / "py.png").read_bytes()
    r2 = post(client, {**body, "format": "npz"})
    assert r2.status_code == 200 and r2.headers["content-type"] == "application/octet-stream"
    npz = tmp_path / "api.npz"
    npz.write_bytes(r2.content)
    with np.load(npz, allow_pickle=False) as z:
        assert torch.equal(torch.from_numpy(z["samples"]), res.samples)
        assert np.array_equal(z["images"], res.images)


def test_stochastic_sampler_and_run_folder_bit_identical(client: TestClient, place: dict[str, Path],
                                                         tmp_path: Path) -> None:
    kw = {"n": 3, "sampler": "ddim", "eta": 1.0, "steps": 3, "seed": 11}
    for model, ref in (("mnist-pixel", "mnist-pixel"), ("pixel", place["pixel"]), ("link-in", place["pixel"])):
        r = post(client, {"model": model, **kw, "format": "npz"})
        assert r.status_code == 200, r.text
        (tmp_path / "x.npz").write_bytes(r.content)
        res = diffusa.load(ref)(**kw)
        with np.load(tmp_path / "x.npz", allow_pickle=False) as z:
            assert torch.equal(torch.from_numpy(z["samples"]), res.samples), model
        assert json.loads(r.headers["x-diffusa-settings"])["model"] == model


def test_autoguidance_api_is_python_autoguidance(client: TestClient, place: dict[str, Path], tmp_path: Path) -> None:
    """`autoguidance` draws against the snapshot the run kept (here a copy of mnist-pixel without its guide, given
    one at a quarter of its 16,000 steps) or the model's own guide (mnist-pixel's guide/), bit-identical to the
    pipeline; a model without either is a 4xx naming it, no path disclosed."""
    from diffusa.checkpoint import load_tensors, save_tensors

    guided = copy_run(place["pixel"], place["runs"] / "guided", guide=False)
    weights = load_tensors(guided / "model.safetensors")
    save_tensors(guided / "snapshots" / "step_4000.safetensors", {k: 0.97 * v for k, v in weights.items()})
    kw = {"n": 2, "sampler": "dpmpp_2m_sde", "steps": 3, "seed": 5, "autoguidance": 2.0}
    r = post(client, {"model": "guided", **kw, "format": "npz"})
    assert r.status_code == 200, r.text
    (tmp_path / "g.npz").write_bytes(r.content)
    res = diffusa.load(guided)(**kw)
    assert res.settings["nfe"] == 6
    with np.load(tmp_path / "g.npz", allow_pickle=False) as z:
        assert torch.equal(torch.from_numpy(z["samples"]), res.samples)
    # a snapshot replaced (the guide when the model names none) is read afresh too
    save_tensors(guided / "snapshots" / "step_4000.safetensors", {k: 0.9 * v for k, v in weights.items()})
    r2 = post(client, {"model": "guided", **kw, "format": "npz"})
    (tmp_path / "g2.npz").write_bytes(r2.content)
    assert r2.status_code == 200 and r2.content != r.content, r2.text
    with np.load(tmp_path / "g2.npz", allow_pickle=False) as z:
        assert torch.equal(torch.from_numpy(z["samples"]), diffusa.load(guided)(**kw).samples)
    own = post(client, {"model": "pixel", **kw, "format": "npz"})  # the model's own guide/
    assert own.status_code == 200, own.text
    (tmp_path / "o.npz").write_bytes(own.content)
    res = diffusa.load(place["pixel"])(**kw)
    assert res.settings["guide"] == "guide/model.safetensors"
    with np.load(tmp_path / "o.npz", allow_pickle=False) as z:
        assert torch.equal(torch.from_numpy(z["samples"]), res.samples)
    plain = {"n": 2, "steps": 3, "seed": 5}  # no sampler, no autoguidance: the model's recommendation, as in Python
    r = post(client, {"model": "pixel", **plain, "format": "npz"})
    assert r.status_code == 200, r.text
    said = json.loads(r.headers["x-diffusa-settings"])
    assert (said["sampler"], said["autoguidance"], said["guide"], said["nfe"]) == (
        "dpmpp_2m_sde", 1.5, "guide/model.safetensors", 6)  # the guide named inside the model: no server path
    (tmp_path / "d.npz").write_bytes(r.content)
    with np.load(tmp_path / "d.npz", allow_pickle=False) as z:
        assert torch.equal(torch.from_numpy(z["samples"]), diffusa.load(place["pixel"])(**plain).samples)
    # a new guide (the model's own files untouched) is loaded afresh, as a retrained model is
    guided2 = copy_run(place["pixel"], place["runs"] / "guided2")
    r1 = post(client, {"model": "guided2", **plain, "format": "npz"})
    g = load_tensors(guided2 / "guide" / "model.safetensors")
    save_tensors(guided2 / "guide" / "model.safetensors", {k: 0.5 * v for k, v in g.items()})
    r2 = post(client, {"model": "guided2", **plain, "format": "npz"})
    (tmp_path / "r2.npz").write_bytes(r2.content)
    assert r1.status_code == r2.status_code == 200 and r1.content != r2.content
    with np.load(tmp_path / "r2.npz", allow_pickle=False) as z:
        assert torch.equal(torch.from_numpy(z["samples"]), diffusa.load(guided2)(**plain).samples)
    shutil.rmtree(guided2)
    unguided = copy_run(place["pixel"], place["runs"] / "unguided", guide=False)
    r = post(client, {"model": "unguided", **kw})
    assert r.status_code == 400 and "no snapshot step_4000" in r.json()["detail"], r.text
    assert str(place["base"]) not in r.text
    shutil.rmtree(unguided)
    r = post(client, {"model": "guided", **kw, "autoguidance": 1e9})
    assert r.status_code == 422 and "autoguidance" in r.text
    shutil.rmtree(guided)


def test_labels_and_prompt_lists(client: TestClient) -> None:
    r = post(client, {"model": "mnist-text", "label": [1, 2], "steps": 2})
    assert r.status_code == 200, r.text
    s = json.loads(r.headers["x-diffusa-settings"])
    assert s["n"] == 2 and s["label"] == [1, 2]
    r = post(client, {"prompt": ["a 1", "ein 2 \u00fc"], "steps": 2})  # the default text model; non-ASCII header
    assert r.status_code == 200, r.text
    assert json.loads(r.headers["x-diffusa-settings"])["prompt"] == ["a 1", "ein 2 \u00fc"]


def test_models_and_openapi(client: TestClient) -> None:
    r = client.get("/api/models")
    assert r.status_code == 200
    got = r.json()
    names = [m["name"] for m in got["models"]]
    assert names[:2] == ["mnist-pixel", "mnist-text"] and "pixel" in names and "evil" in names
    assert "secret" not in json.dumps(got) and "link-out" not in names  # links are not walked
    assert got["limits"]["n"] == 64 and "dpmpp_2m" in got["samplers"]
    spec = client.get("/openapi.json").json()
    schema = spec["paths"]["/api/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "prompt", "n", "seed", "format"} <= set(schema["properties"])
    for route, fields in (("edit", {"image_png", "digit", "strength"}),
                          ("inpaint", {"image_png", "digit", "mask_png", "mask", "jump_length", "jump_n_sample"}),
                          ("upscale", {"image_png", "digit", "noise_level"})):
        body = spec["paths"][f"/api/{route}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert fields | {"model", "prompt", "seed"} <= set(body["properties"]), route
    assert got["limits"]["image_pixels"] == 1 << 22 and got["limits"]["image_png_chars"] == 48_000
    assert got["limits"]["upscale_input_pixels"] == 256 * 256 and got["limits"]["upscale_output_pixels"] == 384 * 384
    assert got["models"][0]["super_resolution"] == 0
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()


# -- hostile requests ----------------------------------------------------------------------------------------------
def _chunks(n: int) -> Any:
    for _ in range(n):
        yield b" " * 4096


JSON = {"content-type": "application/json"}
HOSTILE: list[tuple[str, dict[str, Any], int, str]] = [
    # the body itself
    ("not JSON", {"content": b"model=mnist-text", "headers": JSON}, 400, "not valid JSON"),
    ("form content type", {"content": b"x=1", "headers": {"content-type": "application/x-www-form-urlencoded"}},
     415, "Content-Type"),
    ("no content type", {"content": b"{}"}, 415, "Content-Type"),
    ("text/plain JSON (a form-free CSRF)", {"content": b"{}", "headers": {"content-type": "text/plain"}}, 415,
     "Content-Type"),
    ("a JSON list", {"json": [1, 2]}, 422, "JSON object"),
    ("a JSON string", {"json": "mnist-text"}, 422, "JSON object"),
    ("JSON null", {"content": b"null", "headers": JSON}, 422, "JSON object"),
    ("NaN literal", {"content": b'{"guidance_scale": NaN}', "headers": JSON}, 400, "NaN"),
    ("Infinity literal", {"content": b'{"eta": Infinity}', "headers": JSON}, 400, "Infinity"),
    ("-Infinity literal", {"content": b'{"seed": -Infinity}', "headers": JSON}, 400, "Infinity"),
    ("body over the limit", {"json": {"prompt": "x" * (MAX_BODY + 10)}}, 413, "limit"),
    ("streamed body over the limit", {"content": _chunks(20), "headers": JSON}, 413, "limit"),
    ("bad UTF-8", {"content": b'{"prompt": "\xff\xfe"}', "headers": JSON}, 400, "not valid JSON"),
    ("nested too deeply", {"content": b"[" * 50000 + b"]" * 50000, "headers": JSON}, 413, "limit"),
    ("nested deep within the limit", {"content": b"[" * 30000 + b"]" * 30000, "headers": JSON}, 400, "JSON"),
    ("an integer of 5000 digits", {"content": b'{"seed": ' + b"9" * 5000 + b"}", "headers": JSON}, 400, "JSON"),
    # fields
    ("unknown field", {"json": {"foo": 1}}, 422, "unknown field 'foo'"),
    ("unknown field callback", {"json": {"callback": "os.system"}}, 422, "unknown field 'callback'"),
    ("classifier path not a field", {"json": {"classifier": "/etc"}}, 422, "unknown field 'classifier'"),
    ("batch_size not a field", {"json": {"batch_size": 10**9}}, 422, "unknown field 'batch_size'"),
    ("n zero", {"json": {"n": 0}}, 422, "n:"),
    ("n over the limit", {"json": {"n": 65}}, 422, "n:"),
    ("n huge", {"json": {"n": 10**30}}, 422, "n:"),
    ("n a string", {"json": {"n": "4"}}, 422, "n:"),
    ("n a float", {"json": {"n": 2.5}}, 422, "n:"),
    ("n a bool", {"json": {"n": True}}, 422, "n:"),
    ("steps zero", {"json": {"steps": 0}}, 422, "steps:"),
    ("steps over the limit", {"json": {"steps": 201}}, 422, "steps:"),
    ("steps negative", {"json": {"steps": -5}}, 422, "steps:"),
    ("steps a string", {"json": {"steps": "20"}}, 422, "steps:"),
    ("prompt too long", {"json": {"prompt": "x" * 201}}, 422, "prompt"),
    ("prompts too many", {"json": {"prompt": ["a 1"] * 65}}, 422, "prompt"),
    ("prompts too long together", {"json": {"prompt": ["x" * 200] * 6}}, 422, "prompt"),
    ("prompt a number", {"json": {"prompt": 3}}, 422, "prompt"),
    ("prompt an object", {"json": {"prompt": {"a": 1}}}, 422, "prompt"),
    ("label a word", {"json": {"model": "mnist-text", "label": "seven"}}, 422, "label"),
    ("label negative", {"json": {"model": "mnist-text", "label": -1}}, 422, "label"),
    ("label huge", {"json": {"model": "mnist-text", "label": 10**20}}, 422, "label"),
    ("label list with a word", {"json": {"model": "mnist-text", "label": [1, "x"]}}, 422, "label"),
    ("label a float", {"json": {"model": "mnist-text", "label": 3.5}}, 422, "label"),
    ("label beyond the classes", {"json": {"model": "mnist-text", "label": 10, "steps": 2}}, 400, "label"),
    ("guidance huge", {"json": {"guidance_scale": 1e300}}, 422, "guidance_scale"),
    ("guidance a string", {"json": {"guidance_scale": "3"}}, 422, "guidance_scale"),
    ("eta huge", {"json": {"eta": 1e9}}, 422, "eta"),
    ("eta negative (the pipeline's rule)", {"json": {"sampler": "ddim", "eta": -1.0, "steps": 2}}, 400, "eta"),
    ("seed too large (the pipeline's rule)", {"json": {"seed": 2**70, "steps": 2}}, 400, "seed"),
    ("seed too small", {"json": {"seed": -(2**70), "steps": 2}}, 400, "seed"),
    ("seed a string", {"json": {"seed": "1"}}, 422, "seed"),
    ("unknown sampler", {"json": {"sampler": "nope", "steps": 2}}, 400, "sampler"),
    ("sampler name too long", {"json": {"sampler": "x" * 500}}, 422, "sampler"),
    ("sampler a number", {"json": {"sampler": 5}}, 422, "sampler"),
    ("unknown spacing", {"json": {"spacing": "bogus", "steps": 2}}, 400, "spacing"),
    ("format gif", {"json": {"format": "gif"}}, 422, "format"),
    ("prompt to an unconditional model", {"json": {"model": "mnist-pixel", "prompt": "a 3"}}, 400, "prompt"),
    ("text model without a prompt", {"json": {"model": "mnist-text", "steps": 2}}, 400, "prompt"),
    ("label to an unconditional model", {"json": {"model": "mnist-pixel", "label": 3}}, 400, "label"),
    ("guidance to an unconditional model", {"json": {"model": "mnist-pixel", "guidance_scale": 2.0}}, 400,
     "guidance_scale"),
    ("prompt and label", {"json": {"prompt": "a 3", "label": 3}}, 400, "prompt or a label"),
    ("labels not one per sample", {"json": {"model": "mnist-text", "label": [1, 2], "n": 3}}, 400, "label"),
    # model names
    ("parent folder", {"json": {"model": "../etc"}}, 403, "'..'"),
    ("parent inside a path", {"json": {"model": "pixel/../../outside/secret"}}, 403, "'..'"),
    ("absolute path", {"json": {"model": "/etc"}}, 403, "absolute"),
    ("absolute path to a file", {"json": {"model": "/etc/passwd"}}, 403, "absolute"),
    ("home folder", {"json": {"model": "~root"}}, 403, "absolute"),
    ("a drive", {"json": {"model": "C:/Windows"}}, 403, "absolute"),
    ("backslashes", {"json": {"model": "..\\..\\etc"}}, 403, "backslash"),
    ("a NUL byte", {"json": {"model": "pixel\x00"}}, 403, "control"),
    ("a link out of --runs", {"json": {"model": "link-out"}}, 403, "outside"),
    ("a link out, then up", {"json": {"model": "link-out/../pixel"}}, 403, "'..'"),
    ("no such model", {"json": {"model": "nope"}}, 404, "no such run"),
    ("a file, not a run", {"json": {"model": "notes.txt"}}, 404, "not a run folder"),
    ("empty model name", {"json": {"model": ""}}, 422, "model"),
    ("model a number", {"json": {"model": 5}}, 422, "model"),
    ("a pickle named model.safetensors", {"json": {"model": "evil", "steps": 2}}, 400, "safetensors"),
]


@pytest.mark.parametrize(("what", "request_kw", "status", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_request_refused(client: TestClient, place: dict[str, Path], what: str, request_kw: dict[str, Any],
                                 status: int, message: str) -> None:
    before = tree(place["base"])
    r = client.post("/api/generate", **request_kw)
    assert r.status_code == status, (what, r.text)
    detail = r.json()["detail"]
    assert message in detail, (what, detail)
    assert "Traceback" not in r.text and str(place["base"]) not in r.text
    assert tree(place["base"]) == before, what  # nothing written anywhere, the history included
    assert not (place["base"] / "pwned").exists()


OTHER: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    ("GET on generate", "GET", "/api/generate", {}, 405, "not allowed"),
    ("an unknown API route", "POST", "/api/../../etc/passwd", {"json": {}}, 404, ""),
    ("an API route that is not", "DELETE", "/api/history", {}, 405, "not allowed"),
    ("another unknown API route", "GET", "/api/admin", {}, 404, "no API route"),
    ("history id with traversal", "GET", "/api/history/..%2F..%2Fetc%2Fpasswd", {}, 404, ""),
    ("history id not an id", "GET", "/api/history/nope", {}, 404, "no generation"),
    ("history image not an id", "GET", "/api/history/config/image", {}, 404, "no generation"),
    ("history id of the right shape", "GET", "/api/history/20200101T000000000000-deadbeef/image", {}, 404,
     "no generation"),
    ("another site's name (DNS rebinding)", "GET", "/api/models", {"headers": {"host": "evil.example"}}, 400,
     "127.0.0.1"),
    ("another site's name on the page", "GET", "/", {"headers": {"host": "evil.example:7860"}}, 400, "127.0.0.1"),
    ("a cross-site POST", "POST", "/api/generate", {"json": {}, "headers": {"origin": "http://evil.example"}}, 403,
     "cross-origin"),
    ("an opaque origin", "POST", "/api/generate", {"json": {}, "headers": {"origin": "null"}}, 403, "cross-origin"),
    ("a cross-site POST to the page's queue", "POST", "/gradio_api/queue/join",
     {"json": {}, "headers": {"origin": "http://evil.example"}}, 403, "cross-origin"),
    ("an oversized POST to the page", "POST", "/gradio_api/queue/join",
     {"content": b"{" + b" " * (2 * 1024 * 1024) + b"}", "headers": JSON}, 413, "limit"),
]


@pytest.mark.parametrize(("what", "method", "path", "kw", "status", "message"), OTHER, ids=[o[0] for o in OTHER])
def test_other_hostile_requests(client: TestClient, place: dict[str, Path], what: str, method: str, path: str,
                                kw: dict[str, Any], status: int, message: str) -> None:
    before = tree(place["base"])
    r = client.request(method, path, **kw)
    assert r.status_code == status, (what, r.text)
    assert message in r.json()["detail"], (what, r.text)
    assert "Traceback" not in r.text
    assert tree(place["base"]) == before


def test_same_origin_post_and_internal_error(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    r = post(client, {"model": "mnist-pixel", "n": 1, "steps": 2}, headers={"origin": BASE})
    assert r.status_code == 200, r.text
    service = client.app.state.service

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret detail /very/private/path")

    monkeypatch.setattr(service, "run", broken)
    r = post(client, {"model": "mnist-pixel", "n": 1, "steps": 2})
    assert r.status_code == 500
    assert "internal error" in r.json()["detail"]
    assert "secret" not in r.text and "Traceback" not in r.text and "private" not in r.text
    assert service.gate.admitted == 0  # the place in the queue was given back


# -- edit and inpaint ----------------------------------------------------------------------------------------------
def png_b64(pixels: np.ndarray) -> str:
    """uint8 pixels as a base64 PNG (the API's image_png / mask_png)."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def png_chunks(width: int, height: int, *chunks: tuple[bytes, bytes]) -> str:
    """A hand-made PNG: the signature, an IHDR claiming width x height (8-bit gray), then `chunks`; base64."""
    import base64
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return base64.b64encode(data + b"".join(chunk(k, d) for k, d in chunks)).decode()


def held_out(index: int) -> torch.Tensor:
    """A held-out mnist5k digit as `diffusa edit mnist5k:INDEX` passes it: float (1, 1, 28, 28)."""
    from diffusa.data import load_dataset

    return load_dataset("mnist5k", "test").x[index:index + 1]


def digit_pixels(index: int) -> np.ndarray:
    from diffusa.data import unit_to_uint8

    return unit_to_uint8(held_out(index))[0, ..., 0]  # uint8 (28, 28)


def npz_samples(r: Any, tmp_path: Path) -> torch.Tensor:
    (tmp_path / "api.npz").write_bytes(r.content)
    with np.load(tmp_path / "api.npz", allow_pickle=False) as z:
        return torch.from_numpy(z["samples"])


def test_edit_api_is_python_img2img(client: TestClient, tmp_path: Path) -> None:
    """POST /api/edit == pipe.img2img(...): a held-out digit (tensors), an uploaded PNG to the text model (PNG
    bytes), a larger PNG of the same aspect (resized by the pipeline) and an RGB PNG to a gray model."""
    from PIL import Image

    pixel, text = diffusa.load("mnist-pixel"), diffusa.load("mnist-text")
    r = client.post("/api/edit", json={"digit": 17, "strength": 0.5, "steps": 4, "seed": 3, "format": "npz"})
    assert r.status_code == 200, r.text
    res = pixel.img2img(held_out(17), 0.5, steps=4, seed=3)
    assert torch.equal(npz_samples(r, tmp_path), res.samples)
    assert json.loads(r.headers["x-diffusa-settings"]) == res.settings and res.settings["task"] == "img2img"
    seven = digit_pixels(0)
    body = {"image_png": png_b64(seven), "prompt": "a 7", "n": 2, "strength": 0.7, "steps": 3, "seed": 5}
    r = client.post("/api/edit", json=body)  # the text model: the default with a prompt, as `diffusa edit`
    assert r.status_code == 200, r.text
    res = text.img2img(seven[..., None], 0.7, "a 7", n=2, steps=3, seed=5)
    assert r.content == res.save(tmp_path / "py.png").read_bytes()
    big = np.asarray(Image.fromarray(seven).resize((56, 56)))
    rgb = np.repeat(seven[..., None], 3, -1)
    for image, ref in ((big, big[..., None]), (rgb, np.asarray(Image.fromarray(rgb).convert("L"))[..., None])):
        r = client.post("/api/edit", json={"image_png": png_b64(image), "steps": 2, "seed": 1, "format": "npz"})
        assert r.status_code == 200, r.text
        assert torch.equal(npz_samples(r, tmp_path), pixel.img2img(ref, steps=2, seed=1).samples)


def test_inpaint_api_is_python_inpaint(client: TestClient, tmp_path: Path) -> None:
    """POST /api/inpaint == pipe.inpaint(...) with a mask PNG (ancestral RePaint, tensors) and a named mask (the
    text model, PNG bytes); the history keeps the input and the mask, served beside the result."""
    import io

    from PIL import Image

    mask = np.zeros((28, 28), np.uint8)
    mask[:14, 4:24] = 255
    image = digit_pixels(3)
    body = {"model": "mnist-pixel", "image_png": png_b64(image), "mask_png": png_b64(mask), "steps": 6,
            "jump_length": 2, "jump_n_sample": 2, "seed": 4, "format": "npz"}
    r = client.post("/api/inpaint", json=body)
    assert r.status_code == 200, r.text
    res = diffusa.load("mnist-pixel").inpaint(image[..., None], mask, steps=6, jump_length=2, jump_n_sample=2, seed=4)
    assert torch.equal(npz_samples(r, tmp_path), res.samples)
    assert json.loads(r.headers["x-diffusa-settings"]) == res.settings and res.settings["sampler"] == "ddpm"
    gid = r.headers["x-diffusa-id"]
    record = client.get(f"/api/history/{gid}").json()
    assert record["task"] == "inpaint" and record["request"]["mask"] is None and record["request"]["digit"] is None
    for part, want in (("input", image), ("mask", mask)):
        got = client.get(f"/api/history/{gid}/{part}")
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(got.content))), want)
    r = client.get(f"/api/history/{gid}/secret")
    assert r.status_code == 404 and "no 'secret'" in r.json()["detail"]
    r = client.post("/api/inpaint", json={"model": "mnist-text", "digit": 5, "mask": "top", "prompt": "a 9",
                                          "steps": 4, "jump_length": 2, "jump_n_sample": 2, "seed": 2})
    assert r.status_code == 200, r.text
    res = diffusa.load("mnist-text").inpaint(held_out(5), "top", "a 9", steps=4, jump_length=2, jump_n_sample=2,
                                             seed=2)
    assert r.content == res.save(tmp_path / "py.png").read_bytes()
    gid = r.headers["x-diffusa-id"]
    assert client.get(f"/api/history/{gid}").json()["request"]["mask"] == "top"
    assert client.get(f"/api/history/{gid}/mask").status_code == 404  # a named mask is in the request


def test_upscale_api_is_python_upscale(client: TestClient, sr: Path, tmp_path: Path, cli: Any) -> None:
    """POST /api/upscale == pipe.upscale(...): a held-out digit shrunk to the model's 4x4 input (as `diffusa upscale
    mnist5k:17` shrinks it: the CLI's PNG bytes too), and an uploaded 12x12 PNG upscaled to 24x24 in tiles with a
    stochastic sampler and a noise level of its own; the history keeps the input beside the result."""
    import io

    from PIL import Image

    from diffusa.data import resize_images, unit_to_uint8

    listed = {m["name"]: m for m in client.get("/api/models").json()["models"]}
    assert listed["sr"]["super_resolution"] == 2 and listed["pixel"]["super_resolution"] == 0
    pipe = diffusa.load(sr)
    low = resize_images(held_out(17), (4, 4))
    r = client.post("/api/upscale", json={"model": "sr", "digit": 17, "steps": 3, "seed": 2, "format": "npz"})
    assert r.status_code == 200, r.text
    res = pipe.upscale(low, steps=3, seed=2)
    got = npz_samples(r, tmp_path)
    assert got.shape == (1, 1, 8, 8) and torch.equal(got, res.samples)  # the input's 4x4, twice over
    settings = json.loads(r.headers["x-diffusa-settings"])
    assert settings == {**res.settings, "model": "sr"}
    assert settings["task"] == "upscale" and settings["factor"] == 2 and settings["input_size"] == [4, 4]
    assert settings["output_size"] == [8, 8] and settings["tiles"] == 1 and settings["noise_level"] == 0.1
    assert listed["mnist-sr"]["super_resolution"] == 4  # the shipped upscaler: the default without a model
    assert listed["mnist-inpaint"]["inpaint"] and not listed["mnist-sr"]["inpaint"]  # the inpainting model
    assert listed["mnist-inpaint"]["recommended"]["guidance_scale"] == 3.0
    assert "guidance_scale" not in listed["mnist-sr"]["recommended"]
    r = client.post("/api/upscale", json={"digit": 17, "steps": 2, "seed": 2, "format": "npz"})
    assert r.status_code == 200, r.text
    assert npz_samples(r, tmp_path).shape == (1, 1, 28, 28)
    assert json.loads(r.headers["x-diffusa-settings"])["model"] == "mnist-sr"
    r = client.post("/api/upscale", json={"model": "sr", "digit": 17, "steps": 3, "seed": 2})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    out = cli("upscale", "mnist5k:17", "--model", sr, "--steps", 3, "--seed", 2, "--out", tmp_path / "cli.png",
              "--no-strip")
    assert out.code == 0, out.err
    assert r.content == (tmp_path / "cli.png").read_bytes() == res.save(tmp_path / "py.png").read_bytes()
    gid = r.headers["x-diffusa-id"]
    record = client.get(f"/api/history/{gid}").json()
    assert record["task"] == "upscale" and record["request"]["digit"] == 17 and "n" not in record["request"]
    kept = np.asarray(Image.open(io.BytesIO(client.get(f"/api/history/{gid}/input").content)))
    assert kept.shape == (4, 4) and np.array_equal(kept, unit_to_uint8(low)[0, ..., 0])

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 12), dtype=np.uint8)
    body = {"model": "sr", "image_png": png_b64(image), "sampler": "ddim", "eta": 1.0, "steps": 2, "seed": 9,
            "noise_level": 0.2}
    r = client.post("/api/upscale", json=body)
    assert r.status_code == 200, r.text
    res = pipe.upscale(image[..., None], sampler="ddim", eta=1.0, steps=2, seed=9, noise_level=0.2)
    assert res.samples.shape == (1, 1, 24, 24) and r.content == res.save(tmp_path / "py.png").read_bytes()
    settings = json.loads(r.headers["x-diffusa-settings"])
    assert settings["output_size"] == [24, 24] and settings["tiles"] == 16 and settings["noise_level"] == 0.2
    assert settings["nfe"] == 2  # one denoiser call per step (the 16 tiles in one batch)
    r = client.post("/api/upscale", json={**body, "format": "npz"})
    assert torch.equal(npz_samples(r, tmp_path), res.samples)


BLACK = png_b64(np.zeros((28, 28), np.uint8))
FULL = png_b64(np.full((28, 28), 255, np.uint8))
EDIT_HOSTILE: list[tuple[str, str, dict[str, Any], int, str]] = [
    # the image
    ("bad base64", "edit", {"json": {"image_png": "not base64!!"}}, 400, "image_png: not base64"),
    ("base64 of a JPEG", "edit", {"json": {"image_png": "/9j/4AAQSkZJRgABAQ=="}}, 400, "not a PNG"),
    ("a data URL of a JPEG", "edit", {"json": {"image_png": "data:image/jpeg;base64,AAAA"}}, 400, "data URL"),
    ("the PNG signature alone", "edit", {"json": {"image_png": "iVBORw0KGgo="}}, 400, "IHDR"),
    ("a PNG bomb's header (60000 x 60000)", "edit", {"json": {"image_png": png_chunks(60000, 60000)}}, 413,
     "60000x60000 pixels; at most 67,108,864"),
    ("a PNG over the server's pixels (3000 x 3000)", "edit", {"json": {"image_png": png_chunks(3000, 3000)}}, 413,
     "at most 4,194,304 pixels"),
    ("a PNG of 0 x 0", "edit", {"json": {"image_png": png_chunks(0, 0)}}, 400, "cannot read image"),
    ("a PNG whose data is not deflate", "edit",
     {"json": {"image_png": png_chunks(28, 28, (b"IDAT", b"garbage"), (b"IEND", b""))}}, 400, "cannot read image"),
    ("a PNG without data", "edit", {"json": {"image_png": png_chunks(28, 28, (b"IEND", b""))}}, 400,
     "cannot read image"),
    ("an image of another aspect", "edit", {"json": {"image_png": png_b64(np.zeros((28, 40), np.uint8))}}, 400,
     "image is 28x40; this model draws 28x28"),
    ("image_png over its cap", "edit", {"json": {"image_png": "A" * 48_001}}, 422, "image_png: String should have "
                                                                                   "at most 48000"),
    ("image_png a number", "edit", {"json": {"image_png": 5}}, 422, "image_png"),
    ("image_png and digit", "edit", {"json": {"image_png": BLACK, "digit": 3}}, 422, "not both"),
    ("no image", "edit", {"json": {"strength": 0.5}}, 422, "image_png: give the image as image_png or as digit"),
    ("digit beyond the split", "edit", {"json": {"digit": 1000}}, 422, "digit: the held-out split has digits 0..999"),
    ("digit negative", "edit", {"json": {"digit": -1}}, 422, "digit:"),
    ("digit a string", "edit", {"json": {"digit": "3"}}, 422, "digit:"),
    # strength (the pipeline's rule) and other fields
    ("strength 0", "edit", {"json": {"digit": 3, "strength": 0}}, 400, "strength must be a number in (0, 1]"),
    ("strength 1.5", "edit", {"json": {"digit": 3, "strength": 1.5}}, 400, "strength must be a number in (0, 1]"),
    ("strength NaN", "edit", {"content": b'{"digit": 3, "strength": NaN}', "headers": JSON}, 400, "NaN"),
    ("strength a string", "edit", {"json": {"digit": 3, "strength": "0.5"}}, 422, "strength:"),
    ("strength to inpaint", "inpaint", {"json": {"digit": 3, "mask": "top", "strength": 0.5}}, 422,
     "unknown field 'strength'"),
    ("unknown field", "edit", {"json": {"digit": 3, "foo": 1}}, 422, "unknown field 'foo'"),
    ("cond_image not a field", "edit", {"json": {"digit": 3, "cond_image": "x"}}, 422, "unknown field 'cond_image'"),
    ("classifier not a field", "inpaint", {"json": {"digit": 3, "mask": "top", "classifier": "/etc"}}, 422,
     "unknown field 'classifier'"),
    ("a label to an unconditional model", "edit", {"json": {"model": "mnist-pixel", "digit": 3, "label": 3}}, 400,
     "label"),
    ("body over the limit", "edit", {"json": {"digit": 3, "prompt": "x" * (MAX_BODY + 10)}}, 413, "limit"),
    ("image and mask over the body limit together", "inpaint",
     {"json": {"image_png": "A" * 48_000, "mask_png": "A" * 12_000, "prompt": "x" * 6_000}}, 413, "limit"),
    ("a form", "edit", {"content": b"digit=3", "headers": {"content-type": "application/x-www-form-urlencoded"}}, 415,
     "Content-Type"),
    ("a cross-site POST", "inpaint", {"json": {"digit": 3, "mask": "top"}, "headers": {"origin": "http://evil.example"}},
     403, "cross-origin"),
    # model names
    ("parent folder", "edit", {"json": {"model": "../etc", "digit": 3}}, 403, "'..'"),
    ("absolute path", "inpaint", {"json": {"model": "/etc", "digit": 3, "mask": "top"}}, 403, "absolute"),
    ("a link out of --runs", "edit", {"json": {"model": "link-out", "digit": 3}}, 403, "outside"),
    ("backslashes", "inpaint", {"json": {"model": "..\\etc", "digit": 3, "mask": "top"}}, 403, "backslash"),
    ("no such model", "edit", {"json": {"model": "nope", "digit": 3}}, 404, "no such run"),
    ("a pickle named model.safetensors", "edit", {"json": {"model": "evil", "digit": 3, "steps": 2}}, 400,
     "safetensors"),
    # the mask
    ("an empty mask", "inpaint", {"json": {"digit": 3, "mask_png": BLACK}}, 400, "marks no pixel to repaint"),
    ("a full mask", "inpaint", {"json": {"digit": 3, "mask_png": FULL}}, 400, "covers the whole image"),
    ("a mask of another size", "inpaint", {"json": {"digit": 3, "mask_png": png_b64(np.full((14, 14), 255,
                                                                                             np.uint8))}},
     400, "mask is 14x14; the image is 28x28"),
    ("a mask of bad base64", "inpaint", {"json": {"digit": 3, "mask_png": "%%%"}}, 400, "mask_png: not base64"),
    ("a mask bomb's header", "inpaint", {"json": {"digit": 3, "mask_png": png_chunks(60000, 60000)}}, 413,
     "60000x60000"),
    ("mask_png over its cap", "inpaint", {"json": {"digit": 3, "mask_png": "A" * 12_001}}, 422, "mask_png:"),
    ("an unknown mask name", "inpaint", {"json": {"digit": 3, "mask": "middle"}}, 400, "unknown mask 'middle'"),
    ("a box outside the image", "inpaint", {"json": {"digit": 3, "mask": "box:20,20,14,14"}}, 400, "inside the"),
    ("mask_png and mask", "inpaint", {"json": {"digit": 3, "mask": "top", "mask_png": FULL}}, 422, "not both"),
    ("no mask", "inpaint", {"json": {"digit": 3}}, 422, "mask_png: give the mask as mask_png or as mask"),
    ("a jump longer than the grid", "inpaint", {"json": {"digit": 3, "mask": "top", "steps": 4, "jump_length": 5}},
     400, "jump_length 5 leaves no room"),
    ("jumps beyond the reverse steps", "inpaint",
     {"json": {"digit": 3, "mask": "top", "steps": 200, "jump_length": 1, "jump_n_sample": 20}}, 422,
     "at most 2500"),
    ("jump_n_sample zero on a model without a mask input", "inpaint",
     {"json": {"model": "mnist-pixel", "digit": 3, "mask": "top", "jump_n_sample": 0}}, 400,
     "0 (no replacement, conditioning alone) is for"),
    ("jump_n_sample negative", "inpaint", {"json": {"digit": 3, "mask": "top", "jump_n_sample": -1}}, 422,
     "jump_n_sample:"),
    # upscaling: the model must be a super-resolution run
    ("upscale with a shipped model", "upscale", {"json": {"model": "mnist-pixel", "digit": 3}}, 400,
     "mnist-pixel is not a super-resolution model"),
    ("upscale with a run that is not an upscaler", "upscale", {"json": {"model": "pixel", "digit": 3}}, 400,
     "pixel is not a super-resolution model"),
    ("upscale with a pickle named model.safetensors", "upscale", {"json": {"model": "evil", "digit": 3}}, 400,
     "not a super-resolution model"),
    ("upscale: parent folder", "upscale", {"json": {"model": "../sr", "digit": 3}}, 403, "'..'"),
    ("upscale: parent inside a path", "upscale", {"json": {"model": "sr/../../outside/secret", "digit": 3}}, 403,
     "'..'"),
    ("upscale: absolute path", "upscale", {"json": {"model": "/etc", "digit": 3}}, 403, "absolute"),
    ("upscale: a link out of --runs", "upscale", {"json": {"model": "link-out", "digit": 3}}, 403, "outside"),
    ("upscale: backslashes", "upscale", {"json": {"model": "..\\sr", "digit": 3}}, 403, "backslash"),
    ("upscale: no such model", "upscale", {"json": {"model": "nope", "digit": 3}}, 404, "no such run"),
    # upscaling: the image and its size
    ("upscale: bad base64", "upscale", {"json": {"model": "sr", "image_png": "not base64!!"}}, 400,
     "image_png: not base64"),
    ("upscale: a JPEG", "upscale", {"json": {"model": "sr", "image_png": "/9j/4AAQSkZJRgABAQ=="}}, 400, "not a PNG"),
    ("upscale: a PNG bomb's header", "upscale", {"json": {"model": "sr", "image_png": png_chunks(60000, 60000)}}, 413,
     "60000x60000 pixels; at most 67,108,864"),
    ("upscale: an image over the input pixels (300 x 300)", "upscale",
     {"json": {"model": "sr", "image_png": png_chunks(300, 300)}}, 413,
     "image_png is 300x300 pixels; this server upscales images of at most 65,536 pixels"),
    ("upscale: an output over its pixels (200 x 200, x2)", "upscale",
     {"json": {"model": "sr", "image_png": png_chunks(200, 200)}}, 413,
     "400x400 upscaled x2; this server draws at most 147,456 pixels"),
    ("upscale: a damaged PNG", "upscale",
     {"json": {"model": "sr", "image_png": png_chunks(8, 8, (b"IDAT", b"garbage"), (b"IEND", b""))}}, 400,
     "cannot read image"),
    ("upscale: an image of the output's size", "upscale",
     {"json": {"model": "sr", "image_png": png_b64(np.zeros((8, 8), np.uint8))}}, 400, "the size this model outputs"),
    ("upscale: an image smaller than the input", "upscale",
     {"json": {"model": "sr", "image_png": png_b64(np.zeros((2, 3), np.uint8))}}, 400,
     "smaller than this model's 4x4 input"),
    ("upscale: image_png and digit", "upscale", {"json": {"model": "sr", "image_png": BLACK, "digit": 3}}, 422,
     "not both"),
    ("upscale: no image", "upscale", {"json": {"model": "sr"}}, 422, "image_png: give the image"),
    ("upscale: digit beyond the split", "upscale", {"json": {"model": "sr", "digit": 1000}}, 422, "digit:"),
    # upscaling: the settings
    ("upscale: a factor is the model's", "upscale", {"json": {"model": "sr", "digit": 3, "factor": 4}}, 422,
     "unknown field 'factor'"),
    ("upscale: tile not a field", "upscale", {"json": {"model": "sr", "digit": 3, "tile": 1}}, 422,
     "unknown field 'tile'"),
    ("upscale: n", "upscale", {"json": {"model": "sr", "digit": 3, "n": 4}}, 422, "n: an upscale draws one image"),
    ("upscale: strength not a field", "upscale", {"json": {"model": "sr", "digit": 3, "strength": 0.5}}, 422,
     "unknown field 'strength'"),
    ("upscale: steps zero", "upscale", {"json": {"model": "sr", "digit": 3, "steps": 0}}, 422, "steps:"),
    ("upscale: steps over the limit", "upscale", {"json": {"model": "sr", "digit": 3, "steps": 201}}, 422, "steps:"),
    ("upscale: steps a string", "upscale", {"json": {"model": "sr", "digit": 3, "steps": "3"}}, 422, "steps:"),
    ("upscale: noise level beyond the run's", "upscale",
     {"json": {"model": "sr", "digit": 3, "noise_level": 0.9, "steps": 2}}, 400, "noise_level must be in [0, 0.3]"),
    ("upscale: noise level negative", "upscale", {"json": {"model": "sr", "digit": 3, "noise_level": -0.1,
                                                           "steps": 2}}, 400, "noise_level"),
    ("upscale: noise level a string", "upscale", {"json": {"model": "sr", "digit": 3, "noise_level": "0.1"}}, 422,
     "noise_level:"),
    ("upscale: noise level NaN", "upscale", {"content": b'{"model": "sr", "digit": 3, "noise_level": NaN}',
                                             "headers": JSON}, 400, "NaN"),
    ("upscale: an unknown sampler", "upscale", {"json": {"model": "sr", "digit": 3, "sampler": "nope"}}, 400,
     "sampler"),
    ("upscale: a prompt to an unconditional upscaler", "upscale",
     {"json": {"model": "sr", "digit": 3, "prompt": "a 3", "steps": 2}}, 400, "prompt"),
    ("upscale: format gif", "upscale", {"json": {"model": "sr", "digit": 3, "format": "gif"}}, 422, "format"),
    ("upscale: not JSON", "upscale", {"content": b"model=sr", "headers": JSON}, 400, "not valid JSON"),
    ("upscale: a form", "upscale", {"content": b"model=sr", "headers": {"content-type":
                                                                        "application/x-www-form-urlencoded"}}, 415,
     "Content-Type"),
    ("upscale: a cross-site POST", "upscale", {"json": {"model": "sr", "digit": 3},
                                               "headers": {"origin": "http://evil.example"}}, 403, "cross-origin"),
    ("upscale: body over the limit", "upscale", {"json": {"model": "sr", "digit": 3, "prompt": "x" * (MAX_BODY + 10)}},
     413, "limit"),
]


@pytest.mark.parametrize(("what", "route", "request_kw", "status", "message"), EDIT_HOSTILE,
                         ids=[h[0] for h in EDIT_HOSTILE])
def test_hostile_edit_refused(client: TestClient, place: dict[str, Path], sr: Path, what: str, route: str,
                              request_kw: dict[str, Any], status: int, message: str) -> None:
    before = tree(place["base"])
    r = client.post(f"/api/{route}", **request_kw)
    assert r.status_code == status, (what, r.text)
    assert message in r.json()["detail"], (what, r.json()["detail"])
    assert "Traceback" not in r.text and str(place["base"]) not in r.text
    assert tree(place["base"]) == before, what  # nothing written anywhere, the history included
    assert not (place["base"] / "pwned").exists()


# -- the queue -----------------------------------------------------------------------------------------------------
def test_queue_full_answers_429_and_serves_after(client: TestClient, sr: Path) -> None:
    from diffusa.serve.ui import generate_updates, page_request

    service = client.app.state.service  # max_queue=1: one running (held here) and one waiting
    results: list[int] = []
    body = {"model": "mnist-pixel", "n": 1, "steps": 2}
    with service.gate.running():  # the running generation
        waiters = [threading.Thread(target=lambda: results.append(post(client, body).status_code))
                   for _ in range(2)]
        for w in waiters:
            w.start()
        deadline = time.monotonic() + 10
        while service.gate.admitted < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert service.gate.admitted == 2
        t0 = time.monotonic()
        r = post(client, body)
        assert r.status_code == 429 and "busy" in r.json()["detail"] and r.headers["retry-after"]
        assert time.monotonic() - t0 < 5  # answered at once, not queued
        for route, edit in (("edit", {"digit": 1, "steps": 2}), ("inpaint", {"digit": 1, "mask": "top"}),
                            ("upscale", {"model": "sr", "digit": 1, "steps": 2})):
            r = client.post(f"/api/{route}", json=edit)  # the edits and upscales share the queue
            assert r.status_code == 429 and "busy" in r.json()["detail"], route
        assert client.get("/api/models").status_code == 200  # the server stays responsive
        with pytest.raises(Busy):  # the page shares the queue
            next(generate_updates(service, page_request("mnist-pixel", "", "", "ddim", 2, None, None, 0, 1),
                                  threading.Event()))
    for w in waiters:
        w.join(30)
    assert sorted(results) == [200, 200]
    assert service.gate.admitted == 0


def test_gate_limits() -> None:
    from diffusa.serve.jobs import Gate, Gone

    gate = Gate(0)
    with gate.admit():
        with pytest.raises(Busy), gate.admit():
            pass
    with gate.admit():  # the place came back
        pass
    gone = threading.Event()
    gone.set()
    with pytest.raises(Gone), gate.running(gone):  # a request whose client left before its turn does not run
        raise AssertionError("ran")
    assert not gate._run.locked()  # ... and the lock came back
    gone.clear()
    with gate.running(gone):  # a client still there runs
        assert gate._run.locked()
    for bad in (-1, 33, 1.5, True):
        with pytest.raises(DiffusaError, match="max-queue"):
            Gate(bad)


def wait_for(condition: Any, what: str, seconds: float = 20) -> None:
    """Poll `condition()` until it is true, or fail naming `what`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An app (max_queue 2, no page) under a real uvicorn in a thread, whose clients can hang up: a namespace with
    port, service, server, and `hook`: the pipeline's network calls `hook()` once per forward call (reassign it)."""
    from types import SimpleNamespace

    import uvicorn

    app = create_app(history=tmp_path_factory.mktemp("live") / "h", max_queue=2, ui=False)
    service = app.state.service
    ns = SimpleNamespace(service=service, hook=lambda: None)
    pipe = service.pipeline("mnist-pixel")  # loaded now and kept: the API's requests run this network
    handle = pipe.run.net.register_forward_hook(lambda *_: ns.hook())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    ns.port = sock.getsockname()[1]
    ns.server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=ns.server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: ns.server.started, "uvicorn to start")
        yield ns
    finally:
        ns.server.should_exit = True
        thread.join(15)
        sock.close()
        handle.remove()


def raw_post(port: int, body: dict[str, Any]) -> socket.socket:
    """POST /api/generate on a socket of our own (closing it hangs up); the answer is not read."""
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return s


def test_disconnect_while_queued_is_not_generated(live: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A client that hangs up while its request waits: the request leaves the queue at once, the network is never
    called for it and the history has no entry; the client behind it gets its image, and the server serves on."""
    import httpx

    service, calls, results = live.service, [0], []
    live.hook = lambda: calls.__setitem__(0, calls[0] + 1)
    body = {"model": "mnist-pixel", "n": 1, "steps": 2, "sampler": "ddim", "seed": 1}
    url = f"http://127.0.0.1:{live.port}/api/generate"
    before = len(service.history.entries())
    with service.gate.running():  # the running generation
        leaver = raw_post(live.port, {**body, "seed": 2})
        wait_for(lambda: service.gate.admitted == 1, "the first request to wait")
        stayer = threading.Thread(target=lambda: results.append(httpx.post(url, json=body, timeout=60)))
        stayer.start()
        wait_for(lambda: service.gate.admitted == 2, "the second request to wait")
        leaver.close()
        wait_for(lambda: service.gate.admitted == 1, "the place of the client that left")  # before its turn
    stayer.join(60)
    r = results[0]
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    assert calls[0] == json.loads(r.headers["x-diffusa-settings"])["nfe"] == 2  # the stayer's steps only
    entries = service.history.entries()
    assert len(entries) == before + 1 and entries[0].id == r.headers["x-diffusa-id"]
    assert entries[0].record["settings"]["seed"] == 1  # nothing of the leaver's seed 2
    assert service.gate.admitted == 0
    assert httpx.post(url, json={**body, "seed": 2}, timeout=60).status_code == 200  # the server serves on
    left = [rec for rec in caplog.records if "left" in rec.getMessage()]
    assert len(left) == 1 and "waiting generate request" in left[0].getMessage()


def test_disconnect_while_running_stops_it(live: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A client that hangs up while its generation runs: the drawing stops at its next step, nothing is kept, and
    the place comes back."""
    service, calls = live.service, [0]
    started, proceed = threading.Event(), threading.Event()

    def hook() -> None:
        calls[0] += 1
        if calls[0] == 1:  # hold the first step until the client has hung up
            started.set()
            proceed.wait(30)

    live.hook = hook
    before = len(service.history.entries())
    leaver = raw_post(live.port, {"model": "mnist-pixel", "n": 1, "steps": 20, "sampler": "ddim", "seed": 3})
    try:
        assert started.wait(30)
        leaver.close()
        wait_for(lambda: not live.server.server_state.connections, "the server to see the connection closed")
        time.sleep(0.2)  # its watcher sets the request's `gone` on the event loop's next turn
    finally:
        proceed.set()
    wait_for(lambda: service.gate.admitted == 0, "the place of the client that left")
    assert calls[0] == 1  # stopped after the first of 20 steps
    assert len(service.history.entries()) == before
    left = [rec for rec in caplog.records if "left" in rec.getMessage()]
    assert len(left) == 1 and "stopped after step 1" in left[0].getMessage()


# -- the token -----------------------------------------------------------------------------------------------------
def test_listen_requires_a_token(place: dict[str, Path]) -> None:
    with pytest.raises(DiffusaError, match="token"):
        create_app(history=place["base"] / "h-listen", listen=True, ui=False)
    with pytest.raises(DiffusaError, match="16"):
        create_app(history=place["base"] / "h-listen", token="short", ui=False)
    app = create_app(history=place["base"] / "h-listen", listen=True, token=TOKEN, ui=True)
    with TestClient(app, base_url="http://192.0.2.7:7860", raise_server_exceptions=False) as c:
        for path in ("/api/models", "/docs", "/openapi.json", "/", "/api/history", "/gradio_api/info"):
            r = c.get(path)
            assert r.status_code == 401 and "token" in r.json()["detail"], path
            assert c.get(path, headers={"authorization": "Bearer wrong-token-0123456789"}).status_code == 401
        assert post(c, {"model": "mnist-pixel", "n": 1, "steps": 2}).status_code == 401
        auth = {"authorization": f"Bearer {TOKEN}"}
        assert c.get("/api/models", headers=auth).status_code == 200
        assert c.get(f"/api/models?token={TOKEN}").status_code == 200
        r = post(c, {"model": "mnist-pixel", "n": 1, "steps": 2}, headers=auth)
        assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
        # the page: ?token= becomes a cookie, and leaves the address
        r = c.get(f"/?token={TOKEN}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
        assert c.get("/").status_code == 200  # the client kept the cookie
        assert c.get("/api/models").status_code == 200
        c.cookies.clear()
        assert c.get("/").status_code == 401
    app = create_app(history=place["base"] / "h-listen", token=TOKEN, ui=False)  # a token on loopback too
    with TestClient(app, base_url=BASE) as c:
        assert c.get("/api/models").status_code == 401
        assert c.get("/api/models", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200


# -- history -------------------------------------------------------------------------------------------------------
def test_history_survives_a_new_app(client: TestClient, place: dict[str, Path]) -> None:
    from diffusa.serve.ui import CONTROLS, reload

    body = {"model": "pixel", "n": 2, "sampler": "euler", "steps": 2, "seed": 5}
    r = post(client, body)
    assert r.status_code == 200
    gid = r.headers["x-diffusa-id"]
    app = create_app(runs=place["runs"], history=place["history"], ui=False)  # a restart
    with TestClient(app, base_url=BASE) as c:
        listed = c.get("/api/history").json()["generations"]
        assert listed[0]["id"] == gid
        assert listed[0]["request"] == {"model": "pixel", "prompt": None, "n": 2, "label": None, "sampler": "euler",
                                        "steps": 2, "guidance_scale": None, "eta": None, "variance": None,
                                        "spacing": None, "seed": 5, "autoguidance": None}
        assert c.get(f"/api/history/{gid}/image").content == r.content
        assert c.get(f"/api/history/{gid}").json()["settings"] == json.loads(r.headers["x-diffusa-settings"])
        values, png, record = reload(app.state.service, gid)  # the page's click on the gallery
        got = dict(zip(CONTROLS, values, strict=True))
        assert got["model"] == "pixel" and got["seed"] == 5 and got["steps"] == 2 and got["n"] == 2
        assert Path(png).read_bytes() == r.content and record["id"] == gid
        (place["history"] / "20000101T000000000000-00000000.json").write_text("{torn")  # damaged: skipped
        assert c.get("/api/history").json()["generations"][0]["id"] == gid


# -- the page's handlers -------------------------------------------------------------------------------------------
def test_page_request_uses_the_api_schema() -> None:
    from diffusa.serve.ui import page_request

    req = page_request("mnist-text", "a 3", "", "dpmpp_2m", 4.0, 3, None, 12.0, 2.0)
    assert req.record() == {"model": "mnist-text", "prompt": "a 3", "n": 2, "label": None, "sampler": "dpmpp_2m",
                            "steps": 4, "guidance_scale": 3.0, "eta": None, "variance": None, "spacing": None,
                            "seed": 12, "autoguidance": None}
    assert page_request("mnist-text", "  ", "all", "", 2, None, None, None, 1).label == "all"
    assert page_request("mnist-text", "", "1, 2", "ddim", 2, None, 0, 0, 2).label == [1, 2]
    for args, field in ((("mnist-text", "", "seven", "ddim", 2, None, None, 0, 1), "label"),
                        (("mnist-text", "a", "", "ddim", 2, float("nan"), None, 0, 1), "guidance_scale"),
                        (("mnist-text", "a", "", "ddim", 999, None, None, 0, 1), "steps"),
                        (("mnist-text", "a", "", "ddim", 2, None, None, 0.5, 1), "seed")):
        with pytest.raises(Refusal) as e:
            page_request(*args)
        assert e.value.field == field and e.value.status == 422


def test_page_generation_previews_cancel_and_identity(client: TestClient, place: dict[str, Path],
                                                      tmp_path: Path) -> None:
    from diffusa.serve.ui import generate_updates, history_gallery, page_request

    service = client.app.state.service
    req = page_request("mnist-text", "a 5", "", "dpmpp_2m", 4, None, None, 3, 2)
    steps: list[tuple[int, int]] = []
    updates = list(generate_updates(service, req, threading.Event(), lambda p, desc: steps.append(p)))
    previews = [u[0] for u in updates[:-1]]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert len(previews) == 4 and all(p.dtype == np.uint8 and p.ndim == 2 for p in previews)
    gen = updates[-1][1]
    assert gen.entry is not None and "2 images" in updates[-1][2]
    api = post(client, {"model": "mnist-text", "prompt": "a 5", "n": 2, "steps": 4, "seed": 3})
    assert gen.entry.png.read_bytes() == api.content  # the page's grid is the API's, byte for byte
    items, ids = history_gallery(service)
    assert ids[0] == api.headers["x-diffusa-id"] and ids[1] == gen.entry.id
    assert Path(items[0][0]).is_file() and "a 5" in items[0][1]
    # cancel: the drawing stops at the next step, and nothing is kept
    before = tree(place["history"])
    stop = threading.Event()
    seen = []
    for update in generate_updates(service, page_request("mnist-pixel", "", "", "ddim", 40, None, None, 0, 1), stop):
        seen.append(update)
        stop.set()
    _, gen, status = seen[-1]
    assert len(seen) <= 3 and gen is not None and gen.samples.stopped_at is not None and gen.samples.stopped_at < 39
    assert gen.entry is None and "stopped" in status
    assert tree(place["history"]) == before


def test_page_edit_and_inpaint(client: TestClient, tmp_path: Path) -> None:
    """The edit tabs' handlers: an uploaded PNG and a held-out digit, a mask painted in the editor (scaled down
    to the model's size), the same bytes as the API, reloaded from the history (image, strokes and all) to the
    same bytes again; an upload missing, or nothing painted, refused."""
    from PIL import Image

    from diffusa.serve.schema import EditRequest, InpaintRequest
    from diffusa.serve.ui import (
        DIGIT,
        EDIT_CONTROLS,
        INPAINT_CONTROLS,
        PAINTED,
        UPLOAD,
        before_image,
        editor_value,
        generate_updates,
        history_gallery,
        page_edit_request,
        page_inputs,
        painted_mask,
        reload,
    )

    service = client.app.state.service

    def run(req: Any, inputs: Any) -> Any:
        *_, (_, gen, status) = generate_updates(service, req, threading.Event(), None, inputs)
        assert gen.entry is not None, status
        return gen, status

    seven = digit_pixels(0)
    Image.fromarray(seven).save(tmp_path / "seven.png")
    req = page_edit_request(EditRequest, "mnist-pixel", UPLOAD, 0, "", "", "dpmpp_2m", 4, "", "", 2, 1, strength=0.5)
    gen, status = run(req, page_inputs(service, req, str(tmp_path / "seven.png")))
    assert status.startswith("edited") and "strength 0.5" in status
    api = client.post("/api/edit", json={"image_png": png_b64(seven), "strength": 0.5, "steps": 4, "seed": 2,
                                         "sampler": "dpmpp_2m"})
    assert gen.entry.png.read_bytes() == api.content  # the page's edit is the API's, byte for byte
    values, _, record = reload(service, gen.entry.id)
    got = dict(zip(EDIT_CONTROLS, values, strict=True))
    assert got["source"] == UPLOAD and got["strength"] == 0.5 and got["seed"] == 2 and record["task"] == "img2img"
    again = page_edit_request(EditRequest, *(got[k] for k in EDIT_CONTROLS if k not in ("upload", "strength")),
                              strength=got["strength"])
    assert run(again, page_inputs(service, again, got["upload"]))[0].entry.png.read_bytes() == api.content
    with pytest.raises(Refusal) as e:
        page_inputs(service, req, None)
    assert e.value.status == 422 and "upload a PNG" in str(e.value)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(Refusal, match="image: not a PNG"):  # the API's reader
        page_inputs(service, req, str(tmp_path / "notes.png"))

    value = editor_value(digit_pixels(7))
    assert value["background"].shape == (224, 224, 3) and value["layers"] == []
    stroke = np.zeros((224, 224, 4), np.uint8)
    stroke[:112, 20:200] = (255, 59, 48, 255)  # the top half, painted in the editor
    value["layers"] = [stroke]
    mask = painted_mask(value, (28, 28))
    assert mask[:14, 3:25].all() and not mask[14:].any() and not mask[:, :2].any()
    req = page_edit_request(InpaintRequest, "mnist-pixel", DIGIT, 7, "", "", None, 4, "", "", 3, 1, mask=None,
                            jump_length=2, jump_n_sample=2)
    inputs = page_inputs(service, req, None, value)
    before = before_image(inputs, (1, 28, 28))
    assert before.shape == (224, 224, 3) and (before[:100, 40:180, 0] > before[:100, 40:180, 2]).all()  # tinted
    gen, status = run(req, inputs)
    assert status.startswith("inpainted") and "jumps 2 x 2" in status
    api = client.post("/api/inpaint", json={"model": "mnist-pixel", "digit": 7, "mask_png": png_b64(mask), "steps": 4,
                                            "jump_length": 2, "jump_n_sample": 2, "seed": 3})
    assert gen.entry.png.read_bytes() == api.content
    values, _, record = reload(service, gen.entry.id)
    got = dict(zip(INPAINT_CONTROLS, values, strict=True))
    assert got["source"] == DIGIT and got["digit"] == 7 and got["mask"] == PAINTED and got["jump_n_sample"] == 2
    assert np.array_equal(painted_mask(got["editor"], (28, 28)), mask)  # the strokes come back
    items, ids = history_gallery(service)
    assert ids[1] == gen.entry.id and "inpaint of digit 7 (mask painted)" in items[1][1]
    with pytest.raises(DiffusaError, match="marks no pixel"):  # nothing painted: the pipeline's refusal
        run(req, page_inputs(service, req, None, editor_value(digit_pixels(7))))


def test_page_upscale(client: TestClient, sr: Path, tmp_path: Path) -> None:
    """The upscale tab's handlers: only the super-resolution runs listed; a held-out digit and an uploaded PNG
    upscaled to the API's bytes, beside their bicubic enlargement; reloaded from the history and drawn again to the
    same bytes; a model that is not an upscaler, and an upload over the upscale limit, refused."""
    from PIL import Image

    from diffusa.serve.schema import UpscaleRequest
    from diffusa.serve.ui import (
        DIGIT,
        UPLOAD,
        UPSCALE_CONTROLS,
        bicubic_image,
        generate_updates,
        history_gallery,
        inpaint_passes,
        inpainters,
        page_edit_request,
        page_inputs,
        reload,
        upscalers,
    )

    service = client.app.state.service
    assert upscalers(service) == ["mnist-sr", "sr"]  # the shipped upscaler first
    assert inpainters(service) == ["mnist-inpaint"]  # listed on the inpaint tab only
    # a blank model is the tab's default, mnist-inpaint, as a request that leaves it out
    assert [inpaint_passes(service, m) for m in ("mnist-inpaint", "mnist-pixel", "", "nope")] == [1, 5, 1, 5]

    def run(req: Any, inputs: Any) -> Any:
        *_, (_, gen, status) = generate_updates(service, req, threading.Event(), None, inputs)
        assert gen.entry is not None, status
        return gen, status

    req = page_edit_request(UpscaleRequest, "sr", DIGIT, 17, "", "", "dpmpp_2m", 3, "", "", 2, None, noise_level="")
    inputs = page_inputs(service, req)
    before = bicubic_image(inputs, 1, 2)
    assert before.shape == (12, 12) and before.dtype == np.uint8  # 8x8 and the grid's 2-pixel border
    gen, status = run(req, inputs)
    assert status.startswith("upscaled x2: 4x4 -> 8x8 in 1 tile, noise level 0.1; 1 images"), status
    api = client.post("/api/upscale", json={"model": "sr", "digit": 17, "steps": 3, "seed": 2})
    assert gen.entry.png.read_bytes() == api.content  # the page's upscale is the API's, byte for byte

    image = np.random.default_rng(1).integers(0, 256, (12, 12), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "low.png")
    req = page_edit_request(UpscaleRequest, "sr", UPLOAD, 0, "", "", "ddim", 2, "", 1, 9, None, noise_level="0.2")
    inputs = page_inputs(service, req, str(tmp_path / "low.png"))
    assert bicubic_image(inputs, 1, 2).shape == (28, 28)
    gen, status = run(req, inputs)
    assert "12x12 -> 24x24 in 16 tiles, noise level 0.2" in status, status
    api = client.post("/api/upscale", json={"model": "sr", "image_png": png_b64(image), "sampler": "ddim", "eta": 1.0,
                                            "steps": 2, "seed": 9, "noise_level": 0.2})
    assert gen.entry.png.read_bytes() == api.content
    values, _, record = reload(service, gen.entry.id)
    got = dict(zip(UPSCALE_CONTROLS, values, strict=True))
    assert got["source"] == UPLOAD and got["noise_level"] == 0.2 and got["seed"] == 9 and record["task"] == "upscale"
    again = page_edit_request(UpscaleRequest, *(got[k] for k in UPSCALE_CONTROLS if k not in ("upload", "noise_level")),
                              None, noise_level=got["noise_level"])
    assert run(again, page_inputs(service, again, got["upload"]))[0].entry.png.read_bytes() == api.content
    items, ids = history_gallery(service)
    assert ids[2] == gen.entry.id and "sr: upscale of an upload (x2)" in items[2][1]  # then the API, the rerun

    req = page_edit_request(UpscaleRequest, "mnist-pixel", DIGIT, 3, "", "", None, 2, "", "", 0, None)
    with pytest.raises(Refusal) as e:
        page_inputs(service, req)
    assert e.value.status == 400 and "not a super-resolution model" in str(e.value)
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(tmp_path / "big.png")
    req = page_edit_request(UpscaleRequest, "sr", UPLOAD, 0, "", "", None, 2, "", "", 0, None)
    with pytest.raises(Refusal, match="image is 300x300 pixels; this server upscales images of at most 65,536"):
        page_inputs(service, req, str(tmp_path / "big.png"))


def test_mask_editor_checks_what_the_browser_sends() -> None:
    """The editor's images have their size checked from the header before Gradio decodes them; a layer index
    beyond its few layers is refused; its blobs are kept for a few edits only; no .pyi is written."""
    import base64
    import io
    from types import SimpleNamespace

    import gradio as gr
    from PIL import Image

    from diffusa.serve import ui

    editor = ui.guard_editor(gr.ImageEditor(type="numpy", image_mode="RGBA", render=False))
    for data, message in ((png_chunks(60000, 60000), "cannot be read"),
                          (png_chunks(3000, 3000, (b"IDAT", b"x")), "3000x3000 pixels"), ("bm90IGFuIGltYWdl", "read")):
        with pytest.raises(gr.Error, match=message):
            editor.convert_and_format_image(base64.b64decode(data))
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(buf, "PNG")
    assert editor.convert_and_format_image(buf.getvalue()).shape == (8, 8, 4)
    with pytest.raises(gr.Error, match="layers"):
        editor.accept_blobs(SimpleNamespace(data={"type": "layer", "index": "1000000000", "id": "a"},
                                            files=[("blob", b"x")]))
    for i in range(ui.EDITOR_BLOBS + 5):
        editor.accept_blobs(SimpleNamespace(data={"type": "background", "index": "null", "id": f"edit{i}"},
                                            files=[("blob", b"x")]))
    assert len(editor.blob_storage) == ui.EDITOR_BLOBS and f"edit{ui.EDITOR_BLOBS + 4}" in editor.blob_storage
    assert editor.accept_blobs._is_server_fn
    assert not list(Path(ui.__file__).parent.glob("*.pyi"))


def test_metrics_panel(client: TestClient) -> None:
    from diffusa.serve.ui import run_metrics

    service = client.app.state.service
    loss, text = run_metrics(service, "pixel")
    assert loss is not None and loss.shape == (20, 30, 3)
    assert "| fd | 12.5 | 1.5 |" in text and "| kid | 0.01 |  |" in text and "run" not in text.split("metrics.json")[1]
    loss, text = run_metrics(service, "mnist-text")
    assert loss is None and "shipped" in text
    with pytest.raises(Refusal) as e:
        run_metrics(service, "link-out")
    assert e.value.status == 403


# -- the command line ----------------------------------------------------------------------------------------------
def test_cli_help_and_refusals(cli: Any, tmp_path: Path) -> None:
    r = cli("serve", "--help")
    assert r.code == 0 and "--listen" in r.out and "--max-queue" in r.out and "--token" in r.out
    for args, text in ((["--host", "0.0.0.0"], "--listen"), (["--token", "short"], "16 characters"),
                       (["--runs", str(tmp_path / "none")], "no such folder"), (["--port", "70000"], "port"),
                       (["--max-queue", "1000"], "0..32")):
        r = cli("serve", *args)
        assert r.code == 2 and text in r.err and "Traceback" not in r.err, args
        assert len(r.err.strip().splitlines()) == 1


def test_port_in_use_is_one_line() -> None:
    from diffusa.cli_serve import bind

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(DiffusaError, match="cannot listen"):
            bind("127.0.0.1", s.getsockname()[1]).close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sr_run: Path) -> Any:
    """`diffusa serve --listen --runs RUNS` (bound to loopback here; RUNS/sr: the tiny upscaler) on a free port, in a
    subprocess: (url, token, proc)."""
    import httpx

    base = tmp_path_factory.mktemp("real")
    copy_run(sr_run, base / "runs" / "sr")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "diffusa.cli", "serve", "--listen", "--host", "127.0.0.1",
                             "--port", "0", "--history", str(base / "h"), "--runs", str(base / "runs")],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=base)
    try:
        first = proc.stdout.readline()  # printed once the socket is bound and the app is built
        assert first.startswith("diffusa serve: http://127.0.0.1:"), first
        url, token = first.split()[2].split("?token=")
        for _ in range(100):
            try:
                httpx.get(url + "api/models", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url, token, proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0 and "Traceback" not in out, out  # Ctrl-C stops it cleanly


def test_real_server_with_listen_and_token(server: Any) -> None:
    """The real server prints its URL and a token, refuses a request without the token and answers with it."""
    import httpx

    url, token, _ = server
    assert httpx.get(url + "api/models", timeout=5).status_code == 401
    r = httpx.get(url + "api/models", headers={"authorization": f"Bearer {token}"}, timeout=5)
    assert r.status_code == 200 and r.json()["models"][0]["name"] == "mnist-pixel"


def _browser() -> Any:
    """Headless Debian Chromium through its chromedriver (nothing downloaded), or a skip saying what is missing."""
    missing = [p for p in ("/usr/bin/chromium", "/usr/bin/chromedriver") if not Path(p).exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        pytest.skip(f"no browser test: {', '.join(missing)} missing (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1100"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def _tiles(png: bytes, n: int) -> torch.Tensor:
    """The 28x28 digits of a grid PNG (diffusa.viz.save_image_grid: pad 2, doubled), as float in [-1, 1]."""
    import io
    import math

    from PIL import Image

    grid = np.asarray(Image.open(io.BytesIO(png)))[::2, ::2]
    nrow = math.ceil(math.sqrt(n))
    tiles = [grid[2 + (i // nrow) * 30:2 + (i // nrow) * 30 + 28, 2 + (i % nrow) * 30:2 + (i % nrow) * 30 + 28]
             for i in range(n)]
    return torch.from_numpy(np.stack(tiles)).float()[:, None] / 127.5 - 1


def _paint_top_half(driver: Any) -> None:
    """Brush strokes over the top half of the image in the mask editor (shown fitted to the canvas' height)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#mask-editor button[aria-label=Brush]").click()
    canvas = driver.find_elements(By.CSS_SELECTOR, "#mask-editor canvas")[0]
    side = 0.8 * canvas.size["height"]  # the image's side on the screen, about (offsets: from the canvas' centre)
    strokes = ActionChains(driver, duration=0)
    for k in range(8):
        strokes.move_to_element_with_offset(canvas, int(-0.45 * side), int(-side * (0.47 - 0.06 * k))).click_and_hold()
        for _ in range(3):
            strokes.move_by_offset(int(0.3 * side), 0)
        strokes.release()
    strokes.perform()


def test_page_in_headless_chromium(server: Any, sr_run: Path, tmp_path: Path, digit_classifier_path: Path) -> None:
    """A person's path through the page: open it with the token, type a prompt, generate, read the grid back
    (the Python call's bytes; the classifier sees threes), roll the dice, and reload the seed from the history;
    then in the inpainting tab paint over the top half of the held-out digit, inpaint, and get the bytes Python's
    `pipe.inpaint(digit, mask)` writes for the mask painted; then in the upscale tab upscale the held-out digit
    with the upscaler listed first, the shipped mnist-sr (Python's `pipe.upscale` bytes), and reload it from the
    history."""
    import io

    import httpx
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from diffusa.data import resize_images
    from diffusa.metrics import classify

    url, token, _ = server
    driver = _browser()
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(f"{url}?token={token}")
        prompt = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))
        assert "token" not in driver.current_url
        prompt.clear()
        prompt.send_keys("a handwritten three")
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        wait.until(lambda d: "16 images" in d.find_element(By.CSS_SELECTOR, "#status").text)
        src = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#result img").get_attribute("src"))
        png = httpx.get(src, headers={"authorization": f"Bearer {token}"}, timeout=10).content
        assert png == diffusa.load("mnist-text")("a handwritten three", n=16, seed=0).save(tmp_path / "py.png") \
            .read_bytes()
        threes = float((classify(_tiles(png, 16))[1].argmax(1) == 3).float().mean())
        assert threes >= 0.9, threes
        shot = Path(os.environ.get("DIFFUSA_SCREENSHOTS", tmp_path)) / "serve.png"
        driver.save_screenshot(str(shot))
        seed = driver.find_element(By.CSS_SELECTOR, "#seed input")
        driver.find_element(By.CSS_SELECTOR, "#dice").click()
        wait.until(lambda d: seed.get_attribute("value") not in ("", "0"))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#history img"))[0].click()
        wait.until(lambda d: "reloaded" in d.find_element(By.CSS_SELECTOR, "#status").text)
        assert seed.get_attribute("value") == "0"

        next(t for t in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text == "Inpaint").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#mask-editor canvas")
                   and "select the draw tool" not in d.find_element(By.CSS_SELECTOR, "#mask-editor").text)
        _paint_top_half(driver)
        passes = driver.find_element(By.CSS_SELECTOR, "#inpaint-jump-n-sample input[type=number]")
        assert passes.get_attribute("value") == "1"  # the shipped mnist-inpaint: replacement, no jumps
        driver.find_element(By.CSS_SELECTOR, "#inpaint-go").click()
        wait.until(lambda d: "inpainted" in d.find_element(By.CSS_SELECTOR, "#inpaint-status").text)
        assert wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#inpaint-result img"))
        driver.save_screenshot(str(shot.with_name("serve-inpaint.png")))
        auth = {"authorization": f"Bearer {token}"}
        entry = httpx.get(url + "api/history", headers=auth, timeout=10).json()["generations"][0]
        assert entry["task"] == "inpaint" and entry["source"] == "ui" and entry["request"]["digit"] == 0
        mask = np.asarray(Image.open(io.BytesIO(httpx.get(f"{url}api/history/{entry['id']}/mask", headers=auth,
                                                          timeout=10).content)))
        assert mask.shape == (28, 28) and mask[3:11, 5:23].mean() > 0.9 * 255 and not mask[16:].any(), mask
        done = httpx.get(f"{url}api/history/{entry['id']}/image", headers=auth, timeout=10).content
        assert entry["settings"]["jump_n_sample"] == 1 and entry["settings"]["nfe"] == 20
        assert entry["request"]["model"] == "mnist-inpaint" and entry["settings"]["guidance_scale"] == 3
        python = diffusa.load("mnist-inpaint").inpaint(held_out(0), mask, seed=0)  # its defaults: mask guidance 3
        assert done == python.save(tmp_path / "in.png").read_bytes()

        next(t for t in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text == "Upscale").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upscale-before img"))  # the digit, bicubic x4
        driver.find_element(By.CSS_SELECTOR, "#upscale-go").click()
        wait.until(lambda d: "upscaled x4: 7x7 -> 28x28" in d.find_element(By.CSS_SELECTOR, "#upscale-status").text)
        assert wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upscale-result img"))
        driver.save_screenshot(str(shot.with_name("serve-upscale.png")))
        entry = httpx.get(url + "api/history", headers=auth, timeout=10).json()["generations"][0]
        assert entry["task"] == "upscale" and entry["source"] == "ui" and entry["request"]["model"] == "mnist-sr"
        done = httpx.get(f"{url}api/history/{entry['id']}/image", headers=auth, timeout=10).content
        python = diffusa.load("mnist-sr").upscale(resize_images(held_out(0), (7, 7)), seed=0)
        assert done == python.save(tmp_path / "up.png").read_bytes()
        driver.find_elements(By.CSS_SELECTOR, "#history img")[0].click()
        wait.until(lambda d: "reloaded" in d.find_element(By.CSS_SELECTOR, "#upscale-status").text)
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        driver.quit()
