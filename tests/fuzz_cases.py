"""The malformed inputs of the fuzz suite (issue 16): a sandbox of damaged files, and the command lines that use
them, each of which must be refused in one line, quickly, with nothing written.

`build_sandbox(root, image_run, points_run)` writes the files; `CLI_CASES` are (id, argv) pairs whose arguments
name them through `{sb}` (the sandbox) and `{out}` (an empty folder the command runs in).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HUGE = "1000000000000"  # 10**12
BAD_FLOATS = ["nan", "inf", "-inf", "abc", ""]
BAD_POSITIVE_INTS = ["0", "-1", "2.5", "nan", "abc", "", "1e3", "0x10"]
BAD_THREADS = ["0", "-1", "abc", "", "1.5", "100000", "٣", "Auto"]  # --threads: 'auto' or 1..1024


# -- the sandbox -------------------------------------------------------------------------------------------------
def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height pixels over a tiny compressed body (a decompression bomb's
    header): readers that trust it allocate width x height bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def _folder(root: Path, name: str, files: dict[str, Callable[[Path], None]]) -> None:
    d = root / "folders" / name
    d.mkdir(parents=True)
    for fname, write in files.items():
        write(d / fname)


def _gray(value: int = 128, size: int = 8) -> Callable[[Path], None]:
    return lambda p: Image.fromarray(np.full((size, size), value, np.uint8)).save(p)


NPZ_VARIANTS: dict[str, dict[str, Any]] = {
    "nan": {"x": np.array([[0.0, 1.0], [np.nan, 0.5]] * 8, np.float32)},
    "inf": {"x": np.array([[0.0, 1.0], [np.inf, 0.5]] * 8, np.float32)},
    "huge": {"x": np.array([[0.0, 1.0], [1e30, 0.5]] * 8, np.float32)},
    "strings": {"x": np.array(["a", "b", "c"])},
    "empty": {"x": np.zeros((0, 2), np.float32)},
    "zero_width": {"x": np.zeros((16, 0), np.float32)},
    "scalar": {"x": np.array(3.0)},
    "five_channels": {"images": np.zeros((8, 5, 8, 8), np.uint8)},
    "neg_labels": {"x": np.zeros((16, 2), np.float32), "labels": -np.ones(16, np.int64)},
    "float_labels": {"x": np.zeros((16, 2), np.float32), "labels": np.full(16, 0.5)},
    "short_labels": {"x": np.zeros((16, 2), np.float32), "labels": np.zeros(3, np.int64)},
    "bool": {"x": np.ones((16, 2), bool)},
    "complex": {"x": np.ones((16, 2), np.complex64)},
    "two_arrays": {"a": np.zeros((16, 2), np.float32), "b": np.zeros((16, 2), np.float32)},
    "rank5": {"x": np.zeros((2, 1, 2, 2, 2), np.float32)},
}

# config.json mutations of an image run: (id, dotted key, value); `sample` on each copy must refuse it in one line
CONFIG_MUTATIONS: list[tuple[str, str, Any]] = [
    ("channels_neg", "network.config.channels", -8),
    ("channels_str", "network.config.channels", "8"),
    ("channels_huge", "network.config.channels", 10**7),
    ("channels_null", "network.config.channels", None),
    ("channel_mult_empty", "network.config.channel_mult", []),
    ("channel_mult_zero", "network.config.channel_mult", [0, 1]),
    ("channel_mult_str", "network.config.channel_mult", "12"),
    ("res_blocks_neg", "network.config.num_res_blocks", -1),
    ("patch_zero", "network.config.patch_size", 0),
    ("image_size_huge", "network.config.image_size", 10**6),
    ("num_classes_huge", "network.config.num_classes", 10**10),
    ("num_classes_neg", "network.config.num_classes", -3),
    ("in_channels_zero", "network.config.in_channels", 0),
    ("attention_str", "network.config.attention_resolutions", "4"),
    ("unknown_setting", "network.config.banana", 1),
    ("network_config_null", "network.config", None),
    ("network_config_list", "network.config", [1, 2]),
    ("network_null", "network", None),
    ("network_kind_unknown", "network.kind", "resnet9000"),
    ("network_kind_int", "network.kind", 7),
    ("data_shape_neg", "data_shape", [1, -8, 8]),
    ("data_shape_str", "data_shape", "1,8,8"),
    ("data_shape_empty", "data_shape", []),
    ("data_shape_huge", "data_shape", [1, 10**6, 10**6]),
    ("data_shape_floats", "data_shape", [1.5, 8, 8]),
    ("data_kind_foo", "data_kind", "foo"),
    ("data_kind_null", "data_kind", None),
    ("num_steps_nan", "process.num_steps", float("nan")),
    ("num_steps_huge", "process.num_steps", 10**12),
    ("num_steps_zero", "process.num_steps", 0),
    ("num_steps_str", "process.num_steps", "1000"),
    ("schedule_unknown", "process.schedule", "wobbly"),
    ("process_unknown", "process.name", "teleport"),
    ("process_null", "process", None),
    ("prediction_unknown", "config.model.prediction", "psychic"),
    ("format_foreign", "format", "stable-diffusion"),
    ("version_future", "format_version", 99),
    ("config_section_list", "config", [1]),
    ("model_section_str", "config.model", "unet"),
    ("clip_str", "config.model.clip_x0", "yes"),
    ("conditioning_unknown", "config.model.conditioning", "telepathy"),
    ("sampling_sampler_unknown", "sampling", {"sampler": "warp_drive", "steps": 4}),  # the recommendation
    ("sampling_steps_huge", "sampling", {"sampler": "ddim", "steps": 10**12}),
    ("sampling_steps_beyond_chain", "sampling", {"sampler": "ddim", "steps": 5000}),
    ("sampling_str", "sampling", "fast"),
    ("sampling_few_steps_str", "sampling", {"sampler": "ddim", "steps": 8, "few_steps": "fast"}),
    ("sampling_few_steps_too_many", "sampling", {"sampler": "ddim", "steps": 8,
                                                 "few_steps": {"max_steps": 10**12, "sampler": "unipc"}}),
]


def _set_key(obj: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = obj
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value


def build_sandbox(root: Path, image_run: Path, points_run: Path) -> None:
    """Write every file the cases name under `root`."""
    shutil.copytree(image_run, root / "run")
    shutil.copytree(points_run, root / "pts")
    (root / "afile").write_text("just a file\n")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "users.png")
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(root / "wide.png")
    (root / "users.json").write_text('{"mine": true}\n')
    # data files
    (root / "data").mkdir()
    for name, arrays in NPZ_VARIANTS.items():
        np.savez(root / "data" / f"{name}.npz", **arrays)
    np.save(root / "data" / "plain.npy", np.zeros((4, 2)))
    np.savez(root / "data" / "pickled.npz", x=np.array([{"a": 1}, None], dtype=object))
    (root / "data" / "truncated.npz").write_bytes((root / "data" / "nan.npz").read_bytes()[:40])
    (root / "data" / "text.npz").write_text("not a zip\n")
    # image folders
    (root / "folders").mkdir()
    (root / "folders" / "empty").mkdir()
    _folder(root, "text_png", {"a.png": lambda p: p.write_text("not a png")})
    _folder(root, "zero_png", {"a.png": lambda p: p.write_bytes(b"")})
    _folder(root, "truncated_png", {"a.png": lambda p: (_gray()(p), p.write_bytes(p.read_bytes()[:30]))})
    _folder(root, "bomb", {"a.png": lambda p: _png_header_only(p, 60000, 60000)})
    _folder(root, "huge_header", {"a.png": lambda p: _png_header_only(p, 9000, 9000)})
    _folder(root, "mixed_sizes", {"a.png": _gray(size=8), "b.png": _gray(size=9)})
    _folder(root, "ok8", {f"{i}.png": _gray(10 * i) for i in range(8)})
    # TOML configs
    (root / "cfg").mkdir()
    for name, text in {"nan_lr": "[train]\nlr = nan\n", "inf_clip": "[train]\ngrad_clip = inf\n",
                       "bad_toml": "[train\nlr = 1\n", "unknown_key": "[train]\nbanana = 1\n",
                       "wrong_type": "[train]\nsteps = \"many\"\n", "table_as_value": "train = 3\n",
                       "deep": "a = " + "[" * 500 + "]" * 500 + "\n",
                       "neg_steps": "[process]\nnum_steps = -5\n",
                       "huge_steps": "[process]\nnum_steps = 1000000000000\n",
                       "huge_channels": "[model.net]\nchannels = 100000000\n",
                       "huge_image_size": "[data]\nimage_size = 1000000\n"}.items():
        (root / "cfg" / f"{name}.toml").write_text(text)
    (root / "cfg" / "latin1.toml").write_bytes("[train]\n# caf\xe9\n".encode("latin-1"))
    (root / "cfg" / "binary.toml").write_bytes(bytes(range(256)))
    # runs damaged in their config.json
    base = json.loads((image_run / "config.json").read_text())
    for cid, key, value in CONFIG_MUTATIONS:
        dst = root / "broken" / cid
        shutil.copytree(image_run, dst)
        cfg = json.loads(json.dumps(base))
        _set_key(cfg, key, value)
        (dst / "config.json").write_text(json.dumps(cfg))
    # runs damaged elsewhere
    for cid, damage in {
        "deep_json": lambda d: (d / "config.json").write_text("[" * 100000 + "]" * 100000),
        "config_not_json": lambda d: (d / "config.json").write_text("{nope"),
        "config_binary": lambda d: (d / "config.json").write_bytes(bytes(range(256))),
        "config_array": lambda d: (d / "config.json").write_text("[]"),
        "no_config": lambda d: (d / "config.json").unlink(),
        "no_model": lambda d: (d / "model.safetensors").unlink(),
        "model_truncated": lambda d: (d / "model.safetensors").write_bytes(
            (d / "model.safetensors").read_bytes()[:100]),
        "model_empty": lambda d: (d / "model.safetensors").write_bytes(b""),
        "model_is_folder": lambda d: ((d / "model.safetensors").unlink(), (d / "model.safetensors").mkdir()),
        "model_pickle": lambda d: (d / "model.safetensors").write_bytes(b"\x80\x04\x95" + b"cos\nsystem\n" * 4),
        "model_huge_header": lambda d: (d / "model.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}"),
        "model_foreign": lambda d: shutil.copy(points_run / "model.safetensors", d / "model.safetensors"),
    }.items():
        dst = root / "broken" / cid
        shutil.copytree(image_run, dst)
        damage(dst)
    for name in ("nan", "int8"):
        dst = root / "broken" / f"weights_{name}"
        shutil.copytree(image_run, dst)
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(dst / "model.safetensors"))
        k = sorted(tensors)[0]
        tensors[k] = tensors[k].clone().fill_(float("nan")) if name == "nan" else \
            tensors[k].to(__import__("torch").int8)
        save_file(tensors, str(dst / "model.safetensors"))
    # a classifier folder that is not one, a latent that is not an autoencoder
    (root / "notclassifier").mkdir()
    (root / "notclassifier" / "config.json").write_text('{"format": "diffusa-run"}')


def digest(root: Path) -> dict[str, tuple[int, int, int]]:
    """(size, mtime_ns, mode) of every file and folder under `root`: what a refusal must leave unchanged."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


# -- the command lines -------------------------------------------------------------------------------------------
def _cases() -> list[tuple[str, list[str]]]:
    cases: list[tuple[str, list[str]]] = []

    def add(cid: str, *argv: str) -> None:
        cases.append((cid, list(argv)))

    sample = ["sample", "{sb}/run", "--n", "2", "--steps", "2", "--out", "{out}/s.png"]
    pts = ["sample", "{sb}/pts", "--n", "2", "--steps", "2", "--out", "{out}/s.png"]
    gen = ["generate", "--n", "1", "--steps", "1", "--out", "{out}/g.png"]
    ev = ["eval", "{sb}/pts", "--n", "4", "--steps", "2"]

    def with_flag(base: list[str], flag: str, value: str) -> list[str]:
        argv = list(base)
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
        return argv

    # numeric flags of the sampling commands
    for cmd, base in (("sample", sample), ("generate", gen), ("eval", ev)):
        for v in BAD_POSITIVE_INTS:
            add(f"{cmd}-n-{v}", *with_flag(base, "--n", v))
            add(f"{cmd}-steps-{v}", *with_flag(base, "--steps", v))
        for v in ("abc", "1.5", "nan", "", "10**3"):
            add(f"{cmd}-seed-{v}", *with_flag(base, "--seed", v))
        add(f"{cmd}-seed-huge", *with_flag(base, "--seed", str(10**30)))
        for v in BAD_FLOATS:
            add(f"{cmd}-guidance-{v}", *with_flag(base, "--guidance-scale", v))
        add(f"{cmd}-n-huge", *with_flag(base, "--n", HUGE))
        add(f"{cmd}-steps-huge", *with_flag(base, "--steps", HUGE))
        add(f"{cmd}-sampler-unknown", *with_flag(base, "--sampler", "warp_drive"))
        add(f"{cmd}-sampler-empty", *with_flag(base, "--sampler", ""))
        add(f"{cmd}-unknown-flag", *base, "--banana", "1")
    for cmd, base in (("sample", sample), ("generate", gen), ("eval", ev),
                      ("train", ["train", "--data", "moons", "--out", "{out}/r", "--quiet", "--steps", "2"]),
                      ("edit", ["edit", "mnist5k:3", "--model", "mnist-pixel", "--steps", "2", "--out", "{out}/e.png"]),
                      ("upscale", ["upscale", "mnist5k:3", "--model", "{sb}/run", "--out", "{out}/u.png"]),
                      ("serve", ["serve", "--port", "0", "--history", "{out}/h"])):
        for v in BAD_THREADS:
            add(f"{cmd}-threads-{v}", *with_flag(base, "--threads", v))
    for v in [*BAD_FLOATS, "-1"]:
        add(f"sample-eta-{v}", *with_flag(sample, "--eta", v))
    for v in BAD_FLOATS:
        add(f"sample-cscale-{v}", *with_flag(sample, "--classifier-scale", v))
    for v in ("-1", "10", "abc", "1.0", "", "all,1", "٣"):
        add(f"sample-label-{v}", *with_flag(sample, "--label", v))
    add("sample-spacing-unknown", *with_flag(sample, "--spacing", "fractal"))
    add("sample-variance-unknown", *with_flag(sample, "--variance", "huge"))
    add("sample-eta-on-dpmpp", *with_flag(with_flag(sample, "--sampler", "dpmpp_2m"), "--eta", "0.5"))
    add("sample-prompt-on-unconditional", *with_flag(sample, "--prompt", "a 7"))
    add("sample-classifier-missing", *with_flag(with_flag(sample, "--classifier", "{sb}/nope"), "--label", "1"))
    add("sample-classifier-not-one",
        *with_flag(with_flag(sample, "--classifier", "{sb}/notclassifier"), "--label", "1"))
    add("sample-classifier-is-run", *with_flag(with_flag(sample, "--classifier", "{sb}/run"), "--label", "1"))
    add("sample-cscale-without-classifier", *with_flag(sample, "--classifier-scale", "2"))
    # the run argument
    for cid, run in (("missing", "{sb}/nope"), ("empty", ""), ("a-file", "{sb}/afile"),
                     ("config", "{sb}/run/config.json"),
                     ("dot-dot", "{sb}/run/../nope"), ("nul", "a\x00b"), ("long", "x" * 5000)):
        add(f"sample-run-{cid}", "sample", run, "--n", "2", "--steps", "2", "--out", "{out}/s.png")
    for cid, _, _ in CONFIG_MUTATIONS:
        add(f"sample-config-{cid}", "sample", f"{{sb}}/broken/{cid}", "--n", "2", "--steps", "2",
            "--out", "{out}/s.png")
    for cid in ("deep_json", "config_not_json", "config_binary", "config_array", "no_config", "no_model",
                "model_truncated", "model_empty", "model_is_folder", "model_pickle", "model_huge_header",
                "model_foreign", "weights_nan", "weights_int8"):
        add(f"sample-{cid}", "sample", f"{{sb}}/broken/{cid}", "--n", "2", "--steps", "2", "--out", "{out}/s.png")
        add(f"eval-{cid}", "eval", f"{{sb}}/broken/{cid}", "--n", "2", "--steps", "2")
    # outputs
    for cid, out in (("jpg", "{out}/s.jpg"), ("no-suffix", "{out}/s"), ("npy", "{out}/s.npy"), ("folder", "{out}"),
                     ("under-file", "{sb}/afile/s.png"), ("run-model", "{sb}/run/model.safetensors"),
                     ("run-config", "{sb}/run/config.json"), ("empty", ""), ("users-png", "{sb}/users.png"),
                     ("dev-full", "/dev/full")):
        add(f"sample-out-{cid}", *with_flag(sample, "--out", out))
        add(f"generate-out-{cid}", *with_flag(gen, "--out", out))
    add("sample-trajectory-jpg", *sample, "--trajectory", "{out}/t.jpg")
    add("sample-trajectory-users", *sample, "--trajectory", "{sb}/users.png")
    add("sample-trajectory-run-file", *sample, "--trajectory", "{sb}/run/log.jsonl")
    add("eval-out-users-json", *ev, "--out", "{sb}/users.json")
    add("eval-out-run-config", *ev, "--out", "{sb}/pts/config.json")
    add("eval-out-folder", *ev, "--out", "{sb}")
    add("pts-label", *with_flag(pts, "--label", "1"))
    add("pts-trajectory", *pts, "--trajectory", "{out}/t.png")
    # generate
    for cid, model in (("empty", ""), ("unknown", "mnist-banana"), ("dot-dot", "../../etc"), ("abs", "/etc"),
                       ("spaces", "   ")):
        add(f"generate-model-{cid}", *gen, "--model", model)
    add("generate-prompt-bad-utf8", "generate", "\udcff\udcfe", "--n", "1", "--out", "{out}/g.png")
    add("generate-prompt-on-pixel", "generate", "a 7", "--model", "mnist-pixel", "--n", "1", "--out", "{out}/g.png")
    add("generate-guidance-on-pixel", *gen, "--model", "mnist-pixel", "--guidance-scale", "3")
    # eval
    for v in ("0", "-3", "some", "nan"):
        add(f"eval-terms-{v}", "eval", "{sb}/run", "--bpd", "--terms", v, "--n", "2")
    for v in ("0", "-1", "nan", "inf", "abc", "2"):
        add(f"eval-rtol-{v}", "eval", "{sb}/pts", "--bpd", "--rtol", v, "--n", "2")
    add("eval-bpd-plot-pdf", "eval", "{sb}/run", "--bpd", "--n", "2", "--plot", "{out}/p.pdf")
    add("eval-bpd-plot-users", "eval", "{sb}/run", "--bpd", "--n", "2", "--plot", "{sb}/users.png")
    add("eval-terms-without-bpd", *ev, "--terms", "3")
    # forward
    fwd = ["forward", "--data", "digits", "--out", "{out}/f.png"]
    for flag in ("--n", "--columns", "--num-steps"):
        for v in ("0", "-1", "abc", "1.5", HUGE):
            add(f"forward{flag}-{v}", *with_flag(fwd, flag, v))
    add("forward-schedule-unknown", *fwd, "--schedule", "wobbly")
    add("forward-data-points", "forward", "--data", "moons", "--out", "{out}/f.png")
    add("forward-data-missing", "forward", "--data", "{sb}/nope", "--out", "{out}/f.png")
    add("forward-out-txt", "forward", "--data", "digits", "--out", "{out}/f.txt")
    add("forward-out-users", "forward", "--data", "digits", "--out", "{sb}/users.png")
    add("forward-seed-huge", *fwd, "--seed", str(10**30))
    # train: flags
    tr = ["train", "--data", "moons", "--out", "{out}/r", "--quiet", "--steps", "2"]
    for v in BAD_POSITIVE_INTS:
        add(f"train-steps-{v}", *with_flag(tr, "--steps", v))
        add(f"train-batch-{v}", *with_flag(tr, "--batch-size", v))
    for v in ("abc", "1.5", str(10**30), str(-(10**30))):
        add(f"train-seed-{v}", *with_flag(tr, "--seed", v))
    for v in [*BAD_FLOATS, "-1"]:
        add(f"train-minutes-{v}", *with_flag(tr, "--minutes", v))
        add(f"train-budget-{v}", *with_flag(tr, "--budget", v))
    add("train-budget-and-steps", *tr, "--budget", "1")
    add("train-batch-huge", *with_flag(["train", "--data", "digits", "--out", "{out}/r", "--quiet", "--steps", "2"],
                                       "--batch-size", "1000000000"))
    add("train-process-unknown", *tr, "--process", "teleport")
    add("train-precision-unknown", *tr, "--precision", "fp4")
    add("train-stream-unknown", *tr, "--stream", "maybe")
    add("train-resume-nothing", *tr, "--resume")
    add("train-into-run", "train", "--data", "moons", "--out", "{sb}/pts", "--quiet")
    add("train-out-file", "train", "--data", "moons", "--out", "{sb}/afile", "--quiet")
    add("train-out-under-file", "train", "--data", "moons", "--out", "{sb}/afile/r", "--quiet")
    add("train-init-missing", *tr, "--init", "{sb}/nope")
    add("train-init-damaged", *tr, "--init", "{sb}/broken/model_truncated")
    add("train-init-and-latent", *tr, "--init", "{sb}/run", "--latent", "{sb}/run")
    add("train-latent-not-ae", *tr, "--latent", "{sb}/run")
    add("train-latent-missing", *tr, "--latent", "{sb}/nope")
    # train: data
    for cid, data in (("unknown", "banana"), ("missing-dir", "{sb}/nope"), ("empty-dir", "{sb}/folders/empty"),
                      ("a-text-file", "{sb}/afile"), ("npy", "{sb}/data/plain.npy"),
                      ("pickled", "{sb}/data/pickled.npz"),
                      ("truncated", "{sb}/data/truncated.npz"), ("not-zip", "{sb}/data/text.npz"),
                      *((f"npz-{n}", f"{{sb}}/data/{n}.npz") for n in NPZ_VARIANTS),
                      *((f"folder-{n}", f"{{sb}}/folders/{n}") for n in ("text_png", "zero_png", "truncated_png",
                                                                          "bomb", "huge_header", "mixed_sizes"))):
        add(f"train-data-{cid}", "train", "--data", data, "--out", "{out}/r", "--quiet", "--steps", "2")
    # train: --set
    bad_values = {"nan": "nan", "inf": "inf", "neg": "-1", "str": '"x"', "list": "[1]", "table": "{a = 1}"}
    for key in ("lr", "warmup", "lr_min_ratio", "weight_decay", "grad_clip", "ema_decay", "label_dropout",
                "max_minutes", "budget_minutes", "log_every", "checkpoint_every", "sample_every", "sample_n",
                "sample_steps", "threads", "steps", "batch_size"):
        for vid, v in bad_values.items():
            if key == "steps" and vid == "neg":
                continue  # the case's own --steps 2 wins over --set train.steps
            add(f"train-set-{key}-{vid}", *tr, "--set", f"train.{key}={v}")
    for key, v in (("train.log_every", "0"), ("train.sample_n", "0"), ("train.sample_steps", "0"),
                   ("train.lr", "0"), ("train.ema_decay", "1"), ("train.lr_min_ratio", "2"),
                   ("train.sampler", '"warp"'), ("train.lr_decay", '"exp"'), ("train.precision", '"fp4"'),
                   ("train.seed", str(10**30)), ("train.ema_warmup", "3"), ("train.nope", "1"), ("nope.key", "1"),
                   ("process.num_steps", "0"), ("process.num_steps", "nan"), ("process.num_steps", HUGE),
                   ("process.num_steps", "-5"), ("process.schedule", '"wobbly"'), ("process.name", '"teleport"'),
                   ("process.beta_min", "nan"), ("process.beta_max", "-1"), ("process.sigma_min", "0"),
                   ("process.sigma_max", "inf"), ("process.sigma_data", "nan"),
                   ("model.kind", '"resnet"'), ("model.prediction", '"psychic"'), ("model.conditioning", '"mind"'),
                   ("model.net.hidden", "-4"), ("model.net.hidden", "100000000"), ("model.net.depth", "0"),
                   ("model.net.depth", '"deep"'), ("model.net.banana", "1"), ("model.text.max_len", HUGE),
                   ("loss.kind", '"magic"'), ("loss.norm", '"l3"'), ("loss.weighting", '"heavy"'),
                   ("loss.time_sampler", '"random"'), ("loss.gamma", "nan"), ("loss.p_std", "-1"),
                   ("loss.vlb_weight", "nan"), ("loss.p_mean", "inf"),
                   ("data.name", '""'), ("data.image_size", "0"), ("data.image_size", "-8"),
                   ("data.array", '"nope"'), ("data.stream", '"maybe"'), ("data.grayscale", '"yes"'),
                   ("data.standardize", '"maybe"'), ("data.standardize", "true")):
        add(f"train-set-{key}={v[:12]}", *tr, "--set", f"{key}={v}")
    add("train-set-no-equals", *tr, "--set", "train.lr")
    add("train-set-empty-key", *tr, "--set", "=1")
    img = ["train", "--data", "digits", "--out", "{out}/r", "--quiet", "--steps", "2"]
    for key, v in (("model.net.channels", "-8"), ("model.net.channels", "100000000"), ("model.net.channels", '"8"'),
                   ("model.net.channel_mult", "[]"), ("model.net.channel_mult", "[0]"), ("model.net.patch_size", "0"),
                   ("model.net.patch_size", "3"), ("model.net.num_res_blocks", "-1"),
                   ("model.net.attention_resolutions", '"4"'), ("data.image_size", "1000000"),
                   ("model.net.num_classes", "10000000000"),
                   ("model.net.num_classes", "-2")):
        add(f"train-img-set-{key}={v[:12]}", *img, "--set", f"{key}={v}")
    for name in ("nan_lr", "inf_clip", "bad_toml", "unknown_key", "wrong_type", "table_as_value", "deep", "neg_steps",
                 "huge_steps", "huge_channels", "huge_image_size", "latin1", "binary"):
        add(f"train-config-{name}", *(img if "image" in name or "channels" in name else tr),
            "--config", f"{{sb}}/cfg/{name}.toml")
    add("train-config-missing", *tr, "--config", "{sb}/cfg/nope.toml")
    # train-autoencoder and train-classifier
    ae = ["train-autoencoder", "--data", "digits", "--out", "{out}/ae", "--quiet", "--steps", "2"]
    for flag in ("--latent-channels", "--channels", "--codebook-size", "--steps", "--batch-size"):
        for v in ("0", "-1", "abc", "1.5"):
            add(f"ae{flag}-{v}", *with_flag(ae, flag, v))
    for flag, v in (("--channels", HUGE), ("--codebook-size", HUGE), ("--latent-channels", HUGE),
                    ("--batch-size", "1000000000")):
        add(f"ae{flag}-huge", *with_flag(ae, flag, v), "--kind", "vq")
    for flag in ("--kl-weight", "--lr"):
        for v in [*BAD_FLOATS, "-1"]:
            add(f"ae{flag}-{v}", *with_flag(ae, flag, v))
    add("ae-kind-unknown", *ae, "--kind", "gan")
    add("ae-factor-3", *ae, "--factor", "3")
    add("ae-seed-huge", *ae, "--seed", str(10**30))
    add("ae-data-points", "train-autoencoder", "--data", "moons", "--out", "{out}/ae", "--quiet")
    add("ae-out-run", "train-autoencoder", "--data", "digits", "--out", "{sb}/run", "--quiet")
    add("ae-resume-nothing", *ae, "--resume")
    cl = ["train-classifier", "{sb}/run", "--out", "{out}/c", "--quiet", "--steps", "2"]
    for flag in ("--steps", "--batch-size"):
        for v in ("0", "-1", "abc"):
            add(f"clf{flag}-{v}", *with_flag(cl, flag, v))
    for v in [*BAD_FLOATS, "-1", "0"]:
        add(f"clf-lr-{v}", *with_flag(cl, "--lr", v))
    add("clf-seed-huge", *with_flag(cl, "--seed", str(10**30)))
    add("clf-batch-huge", *with_flag(cl, "--batch-size", "1000000000"))
    add("clf-run-missing", "train-classifier", "{sb}/nope", "--out", "{out}/c", "--quiet")
    add("clf-run-unlabelled", "train-classifier", "{sb}/pts", "--out", "{out}/c", "--quiet")
    add("clf-run-damaged", "train-classifier", "{sb}/broken/process_unknown", "--out", "{out}/c", "--quiet")
    add("clf-run-deep-json", "train-classifier", "{sb}/broken/deep_json", "--out", "{out}/c", "--quiet")
    add("clf-out-run", "train-classifier", "{sb}/run", "--out", "{sb}/pts", "--quiet")
    add("clf-resume-nothing", *cl, "--resume")
    # edit and inpaint (image to image)
    ed = ["edit", "mnist5k:3", "--model", "mnist-pixel", "--steps", "2", "--out", "{out}/e.png"]
    for v in ("0", "-0.5", "1.5", "nan", "inf", "abc", ""):
        add(f"edit-strength-{v}", *ed, "--strength", v)
    for cid, image in (("missing", "{sb}/nope.png"), ("text-file", "{sb}/afile"),
                       ("not-png", "{sb}/folders/text_png/a.png"),
                       ("bomb", "{sb}/folders/bomb/a.png"), ("npz-strings", "{sb}/data/strings.npz"),
                       ("npz-nan", "{sb}/data/nan.npz"), ("npz-five", "{sb}/data/five_channels.npz"),
                       ("digit-out-of-range", "mnist5k:999999"), ("digit-bad", "mnist5k:x"), ("empty", ""),
                       ("wrong-aspect", "{sb}/wide.png")):
        add(f"edit-image-{cid}", "edit", image, "--model", "mnist-pixel", "--steps", "2", "--out", "{out}/e.png")
    for flag, v in (("--n", "0"), ("--steps", "0"), ("--steps", HUGE), ("--n", HUGE), ("--seed", "1.5"),
                    ("--sampler", "warp"), ("--guidance-scale", "nan"), ("--label", "11"), ("--eta", "-1")):
        add(f"edit{flag}-{v}", *with_flag(ed, flag, v))
    for cid, out in (("users-png", "{sb}/users.png"), ("jpg", "{out}/e.jpg"), ("run-file", "{sb}/run/config.json"),
                     ("under-file", "{sb}/afile/e.png")):
        add(f"edit-out-{cid}", *with_flag(ed, "--out", out))
    add("edit-model-missing", *with_flag(ed, "--model", "{sb}/nope"))
    add("edit-model-damaged", *with_flag(ed, "--model", "{sb}/broken/weights_nan"))
    inp = ["inpaint", "mnist5k:3", "--model", "mnist-pixel", "--steps", "2", "--out", "{out}/i.png", "--mask", "center"]
    for cid, mask in (("unknown", "blob"), ("box-outside", "box:100,100,5,5"), ("box-bad", "box:a,b"),
                      ("box-empty", "box:0,0,0,0"), ("missing", "{sb}/nope.png"), ("text", "{sb}/afile"),
                      ("wrong-aspect", "{sb}/wide.png"), ("all-black", "{sb}/users.png"), ("empty", "")):
        add(f"inpaint-mask-{cid}", *with_flag(inp, "--mask", mask))
    for flag in ("--jump-length", "--jump-n-sample"):
        for v in ("0", "-1", "abc", HUGE):
            add(f"inpaint{flag}-{v}", *with_flag(inp, flag, v))
    add("inpaint-no-mask", *inp[:-2])
    add("inpaint-out-users", *with_flag(inp, "--out", "{sb}/users.png"))
    # no command, unknown command
    add("no-command")
    add("unknown-command", "teleport")
    return cases


CLI_CASES = _cases()
