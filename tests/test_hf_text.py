"""The offline Hugging Face text-encoder path: a local model directory loads, trains a text-conditional run and
samples from it with every socket refused; its frozen weights stay out of the run's checkpoint."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from conftest import DIGITS_OVERRIDES, train_run

transformers = pytest.importorskip("transformers")

WORDS = ["a", "the", "digit", "handwritten", "number", "seven", "one", "two", "three", "7", "3"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 16-wide BERT with a word-level vocabulary, saved as a local model directory."""
    path = tmp_path_factory.mktemp("bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(path)
    return path


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_local_model_directory_loads_offline_and_masks_padding(tiny_bert: Path, no_network: None):
    from diffusa.nets.hf_text import HFTextEncoder

    enc = HFTextEncoder(str(tiny_bert), max_len=12)
    cond = enc.tokenize(["a handwritten seven", "the digit 3"])
    assert cond["tokens"].shape == (2, 12) and cond["mask"][0].sum() == 5  # [CLS] a handwritten seven [SEP]
    feats = enc(cond["tokens"], cond["mask"])
    assert feats.shape == (2, 12, 16) and not feats.requires_grad
    assert list(enc.state_dict()) == [] and list(enc.parameters()) == []  # frozen, and not part of checkpoints
    from diffusa.cond import Cond
    from diffusa.nets.text import TextUNet

    net = TextUNet({"channels": 8, "channel_mult": [1, 2], "attention_resolutions": [4], "image_size": 8},
                   {"encoder": "hf", "path": str(tiny_bert), "max_len": 12})
    tok = net.tokenize(["a handwritten seven", "the digit 3"])  # the network's tokenize: a Cond
    assert isinstance(tok, Cond) and torch.equal(tok.tokens, cond["tokens"]) and tok.token_mask[0].sum() == 5
    assert net(torch.zeros(2, 1, 8, 8), torch.zeros(2), tok).shape == (2, 1, 8, 8)


def test_hf_text_run_trains_saves_small_and_samples(tiny_bert: Path, no_network: None, tmp_path: Path, cli):
    overrides = [*DIGITS_OVERRIDES, "train.steps=2", 'model.conditioning="text"', 'model.text.encoder="hf"',
                 f"model.text.path='{tiny_bert}'", "model.text.max_len=12"]
    run = train_run(tmp_path / "run", overrides)
    from diffusa.checkpoint import load_tensors

    keys = list(load_tensors(run / "model.safetensors"))
    assert keys and not any("frozen" in k or "word_embeddings" in k for k in keys)
    r = cli("sample", run, "--n", 4, "--steps", 2, "--prompt", "the digit seven", "--guidance-scale", 2,
            "--out", tmp_path / "s.png")
    assert r.code == 0, r.err


def test_missing_encoder_directory_is_one_line(tmp_path: Path, cli):
    overrides = ["--set", 'model.conditioning="text"', "--set", 'model.text.encoder="hf"', "--set",
                 f"model.text.path='{tmp_path / 'nope'}'"]
    r = cli("train", "--data", "digits", "--out", tmp_path / "run", "--steps", 1, *overrides)
    assert r.code == 2 and "does not exist" in r.err and r.err.count("\n") == 1, r.err
