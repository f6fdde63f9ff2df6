"""Text conditioning: the byte tokenizer, cross-attention and its padding masks (against a hand-written
attention), the text transformer, classifier-free guidance on captions, and training and sampling end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DIGITS_OVERRIDES, train_run

from diffusa import Denoiser
from diffusa.conditioning import Conditioner
from diffusa.data import Dataset, load_dataset
from diffusa.errors import DiffusaError
from diffusa.guidance import classifier_free
from diffusa.nets.layers import CrossAttentionBlock
from diffusa.nets.text import TextEncoderConfig, TextTransformer, TextUNet
from diffusa.process import DiscreteDDPM
from diffusa.text import (
    BOS,
    EOS,
    FILLER,
    HELD_OUT_TEMPLATES,
    PAD,
    RESERVED,
    TRAIN_TEMPLATES,
    WORDS,
    digit_caption,
    digit_captions,
    null_text,
    random_word,
    tokenize,
)

TEXT = [*DIGITS_OVERRIDES, 'model.conditioning="text"', "model.text.width=32", "model.text.depth=1",
        "model.text.heads=2", "model.text.max_len=32"]


def test_tokenize_bytes_bos_eos_pad_and_truncation():
    out = tokenize(["ab", "", "é" * 40], max_len=8)
    assert out["tokens"][0].tolist() == [BOS, 97, 98, EOS, PAD, PAD, PAD, PAD]
    assert out["tokens"][1].tolist()[:2] == [BOS, EOS] and out["mask"][1].sum() == 2
    assert out["tokens"][2].tolist() == [BOS, *"é".encode()[:2] * 3, EOS]  # 6 bytes kept, then EOS
    assert out["mask"].dtype == torch.bool and out["mask"][0].tolist() == [True] * 4 + [False] * 4
    null = null_text(out)
    assert torch.equal(null["tokens"], tokenize(["", "", ""], 8)["tokens"])
    with pytest.raises(DiffusaError, match="strings"):
        tokenize([3])


def test_caption_templates():
    assert digit_caption(7, "the digit {w}") == "the digit seven" and digit_caption(3, "a handwritten {d}") == \
        "a handwritten 3"
    assert not set(TRAIN_TEMPLATES) & set(HELD_OUT_TEMPLATES)
    caps = digit_captions(torch.tensor([1, 2, 3] * 50), torch.Generator().manual_seed(0))
    assert len(set(caps)) > 20 and all(("1" in c or "one" in c) for c in caps[::3])
    # extra words on about half, none of them from the held-out phrasings, the template's words kept in order
    held = {w.strip(",") for w in " ".join(HELD_OUT_TEMPLATES).split()}
    assert not held & set(FILLER) and held <= RESERVED and set(WORDS) <= RESERVED
    plain = set(digit_captions(torch.tensor([1, 2, 3] * 50), torch.Generator().manual_seed(0), filler_p=0.0))
    assert plain <= {digit_caption(y, t) for y in (1, 2, 3) for t in TRAIN_TEMPLATES}
    padded = [c for c in caps if c not in plain]
    assert 50 <= len(padded) <= 100
    vocab = {w for t in TRAIN_TEMPLATES for w in t.split()} | {"1", "2", "3", "one", "two", "three"}

    def is_subsequence(short: list[str], long: list[str]) -> bool:
        it = iter(long)
        return all(w in it for w in short)

    randoms = []
    for c in padded:
        words = [w.strip(",") for w in c.split()]
        assert c.count(",") <= 1 and not c.endswith(",")
        assert any(is_subsequence(digit_caption(y, t).split(), words) and 1 <= len(words) - len(t.split()) <= 3
                   for y in (1, 2, 3) for t in TRAIN_TEMPLATES), c
        extra = set(words) - vocab - set(FILLER)
        assert not extra & RESERVED and all(w.isalpha() and w.islower() and 2 <= len(w) <= 7 for w in extra)
        randoms += extra
    assert len(randoms) >= 20  # about half of the extra words are random strings
    assert sum("," in c for c in padded) >= 5
    g = torch.Generator().manual_seed(1)
    words = [random_word(g) for _ in range(2000)]
    assert {len(w) for w in words} == set(range(2, 8)) and len(set(words)) > 1800  # 2-7 letters, rarely repeated


def reference_cross_attention(block: CrossAttentionBlock, x, context, mask):
    """softmax(q k^T / sqrt(d) + mask) v per head, written out."""
    b, c, h, w = x.shape
    heads, d = block.heads, c // block.heads
    q = block.q(block.norm(x)).reshape(b, heads, d, h * w).transpose(-1, -2)
    kv = block.kv(context).reshape(b, -1, 2, heads, d)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / math.sqrt(d)
    logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
    out = (logits.softmax(-1) @ v).transpose(-1, -2).reshape(b, c, h, w)
    return x + block.proj(out)


def test_cross_attention_matches_the_formula_and_respects_padding():
    torch.manual_seed(0)
    block = CrossAttentionBlock(16, 12, head_dim=8)
    torch.nn.init.normal_(block.proj.weight, std=0.3)  # zero-initialised: would hide everything
    x, ctx = torch.randn(2, 16, 3, 3), torch.randn(2, 5, 12)
    mask = torch.tensor([[True, True, True, False, False], [True, False, False, False, False]])
    out = block(x, ctx, mask)
    assert torch.allclose(out, reference_cross_attention(block, x, ctx, mask), atol=1e-5)
    changed = ctx.clone()
    changed[~mask] = 100 * torch.randn(int((~mask).sum()), 12)  # only padded tokens differ
    assert torch.allclose(block(x, changed, mask), out, atol=1e-5)
    changed[0, 1] += 1.0  # a real token differs
    assert not torch.allclose(block(x, changed, mask)[0], out[0], atol=1e-4)


def test_text_transformer_ignores_padding():
    torch.manual_seed(0)
    enc = TextTransformer(TextEncoderConfig(width=16, depth=2, heads=2, max_len=10)).eval()
    a = tokenize(["seven"], 10)
    b = {k: v.clone() for k, v in a.items()}
    b["tokens"][0, 8] = 65  # a different token at a padded position
    fa, fb = enc(a["tokens"], a["mask"]), enc(b["tokens"], b["mask"])
    real = a["mask"][0]
    assert torch.allclose(fa[0, real], fb[0, real], atol=1e-5)
    with pytest.raises(ValueError, match="max_len"):
        enc(tokenize(["x"], 12)["tokens"], tokenize(["x"], 12)["mask"])


def test_classifier_free_guidance_on_captions_in_one_call():
    torch.manual_seed(0)
    net = TextUNet({"channels": 8, "channel_mult": [1, 2], "attention_resolutions": [4], "image_size": 8,
                    "emb_mult": 2}, {"width": 16, "depth": 1, "heads": 2, "max_len": 16}).eval()
    for p in net.unet.parameters():
        torch.nn.init.normal_(p, std=0.2)
    calls = []
    net.unet.register_forward_hook(lambda *_: calls.append(1))
    den = Denoiser.from_network(net, DiscreteDDPM("cosine", 100), "eps")
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 0.5, dtype=torch.float64)
    cond = tokenize(["a 7", "the digit two", "nine"], 16)
    with torch.no_grad():
        c, u = den.output(x, t, cond), den.output(x, t, null_text(cond))
        calls.clear()
        w3 = classifier_free(den, 3.0, null_text).output(x, t, cond)
        assert len(calls) == 1
        assert torch.allclose(classifier_free(den, 0.0, null_text).output(x, t, cond), u, atol=1e-6)
        assert torch.allclose(classifier_free(den, 1.0, null_text).output(x, t, cond), c, atol=1e-6)
    assert not torch.allclose(c, u, atol=1e-3) and torch.allclose(w3, 3 * c - 2 * u, atol=1e-5)


def test_conditioner_drops_captions_to_the_empty_one():
    data = Dataset("d", torch.zeros(400, 1, 4, 4), torch.arange(400) % 10, "image", 10)
    tok = Conditioner("text", data, 0.5, 10, tokenizer=lambda texts: tokenize(texts, 24))
    cond = tok.training(torch.arange(400), torch.Generator().manual_seed(0))
    empty = cond.token_mask.sum(1) == 2  # BOS, EOS
    assert abs(float(empty.double().mean()) - 0.5) < 0.08 and cond.tokens.shape == (400, 24)


def write_folder(folder: Path, n: int = 6) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"im{i}.png")


def test_caption_files_for_image_folders(tmp_path: Path):
    folder = tmp_path / "imgs"
    write_folder(folder)
    assert load_dataset(str(folder)).captions is None
    (folder / "captions.jsonl").write_text("".join(json.dumps({"file": f"im{i}.png", "caption": f"pic {i}"}) + "\n"
                                                   for i in range(6)))
    data = load_dataset(str(folder))
    assert data.captions == [f"pic {i}" for i in range(6)]
    cond = Conditioner("text", data, 0.0, tokenizer=lambda texts: tokenize(texts, 16)).training(
        torch.tensor([2, 0]), torch.Generator())
    assert torch.equal(cond.tokens, tokenize(["pic 2", "pic 0"], 16)["tokens"])
    (folder / "captions.jsonl").write_text('{"file": "im0.png"}\n')
    with pytest.raises(DiffusaError, match=r"captions\.jsonl:1"):
        load_dataset(str(folder))
    (folder / "captions.jsonl").unlink()
    (folder / "captions.csv").write_text("file,caption\nim0.png,a cat\n")
    with pytest.raises(DiffusaError, match=r"no caption for im1\.png"):
        load_dataset(str(folder))
    (folder / "captions.csv").write_bytes(b"file,caption\nim0.png,\xff\xfe\n")
    with pytest.raises(DiffusaError, match="not UTF-8"):
        load_dataset(str(folder))
    (folder / "captions.csv").write_text("file,caption\n" + "".join(f"im{i}.png,c{i}\n" for i in range(6)))
    assert load_dataset(str(folder)).captions[3] == "c3"
    run = train_run(tmp_path / "run", [f"data.name='{folder}'", 'model.conditioning="text"', "train.steps=2",
                                       "train.batch_size=4", "train.sample_every=0", "train.sample_n=4",
                                       "train.sample_steps=2", "model.net.channels=8", "model.text.width=16",
                                       "model.text.depth=1", "model.text.heads=2"])
    assert (run / "samples" / "final.png").is_file()
    bare = tmp_path / "bare"
    write_folder(bare)
    with pytest.raises(DiffusaError, match="needs captions"):
        train_run(tmp_path / "run2", [f"data.name='{bare}'", 'model.conditioning="text"', "train.steps=1"])


def test_text_model_trains_samples_and_rejects_bad_prompts(cli, tmp_path: Path, digits_run: Path):
    run = train_run(tmp_path / "text", TEXT)
    r = cli("sample", run, "--n", 6, "--steps", 3, "--prompt", "the digit seven", "--guidance-scale", 3,
            "--out", tmp_path / "s.npz")
    assert r.code == 0, r.err
    again = tmp_path / "t.npz"
    assert cli("sample", run, "--n", 6, "--steps", 3, "--prompt", "the digit seven", "--guidance-scale", 3,
               "--out", again).code == 0
    assert np.array_equal(np.load(tmp_path / "s.npz")["samples"], np.load(again)["samples"])  # same seed
    r = cli("generate", "the digit seven", "--model", run, "--n", 6, "--steps", 3, "--guidance-scale", 3,
            "--out", tmp_path / "g.npz")
    assert r.code == 0 and "wrote 6 samples" in r.out, r.err  # generate is sample with a prompt, on any run
    assert np.array_equal(np.load(tmp_path / "g.npz")["samples"], np.load(again)["samples"])
    r = cli("generate", "--model", run, "--n", 2, "--steps", 2, "--out", tmp_path / "g.png")
    assert r.code == 2 and "give a prompt" in r.err and r.err.count("\n") == 1
    r = cli("generate", "a 3", "--model", digits_run, "--n", 2, "--steps", 2, "--out", tmp_path / "g.png")
    assert r.code == 2 and "takes no prompt" in r.err and r.err.count("\n") == 1
    r = cli("sample", run, "--n", 4, "--steps", 2, "--out", tmp_path / "x.png")
    assert r.code == 2 and "is text-conditional: give a prompt" in r.err
    r = cli("sample", digits_run, "--n", 4, "--steps", 2, "--prompt", "a 3", "--out", tmp_path / "x.png")
    assert r.code == 2 and "not text-conditional" in r.err and r.err.count("\n") == 1
    r = cli("eval", run, "--n", 20, "--steps", 2, "--label", "all", "--guidance-scale", 2)
    assert r.code == 0 and "conditional_accuracy" in r.out, r.err
