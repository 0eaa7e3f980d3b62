"""Tiny random models shared by the tests (registered by tests/conftest.py).

`tiny_model_dir` is a whole LWM folder (decoder, VQGAN, SentencePiece tokenizer), built once per
session; tests read it and never write into it. Everything is random: the tests check plumbing,
shapes, limits and protocols, never what the model says. Frames are 8x8 pixels = 4x4 = 16 codes (17
tokens with the delimiter), the codebook has 64 entries and the context 1024 tokens, so drawing a
frame takes a fraction of a second. `tiny_lm` is a bare decoder of the "tiny" preset, seeded.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lwm import media

CONTEXT = 1024
RESOLUTION = 8


def tiny_lm(attn_implementation: str | None = None, seed: int = 0, **overrides):
    """A random decoder of the "tiny" preset in eval mode, the same for the same seed and settings."""
    from lwm.model import LWMConfig, LWMForCausalLM

    torch.manual_seed(seed)
    return LWMForCausalLM(LWMConfig.from_preset("tiny", attn_implementation=attn_implementation, **overrides)).eval()


def build_tiny_model_dir(directory: Path) -> Path:
    from lwm.api import LWM
    from lwm.model import LWMConfig, LWMForCausalLM
    from lwm.tokenizers import VQGAN, LWMProcessor, VQGANConfig, train_text_tokenizer

    rng = random.Random(0)
    words = "the a red blue ball cube moves left right video image describe what is it of an and".split()
    lines = [" ".join(rng.choice(words) for _ in range(12)) + " USER: ASSISTANT: <vision></vision>" for _ in range(600)]
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(lines))
    tokenizer = train_text_tokenizer([str(corpus)], 320, str(directory / "tokenizer"))

    torch.manual_seed(0)
    # A random codebook (the preset's k-means init leaves it at zero until trained, which would
    # encode every frame to the same codes and decode every code to the same pixels).
    vqgan = VQGAN(VQGANConfig.from_preset("tiny", resolution=RESOLUTION, kmeans_init=False)).eval()
    config = LWMConfig.from_preset(
        "tiny",
        vocab_size=len(tokenizer),
        num_vision_codes=vqgan.codebook_size,
        vision_vocab_size=vqgan.codebook_size + 8,
        max_position_embeddings=CONTEXT,
    )
    model = LWMForCausalLM(config).eval()
    model_dir = directory / "model"
    LWM(model, LWMProcessor(tokenizer, vqgan)).save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-lwm"))


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """A PNG image and an MP4 video (plus non-media bytes) to attach."""
    folder = tmp_path_factory.mktemp("media")
    write_test_media(folder)
    return folder


def write_test_media(folder: Path) -> None:
    rng = np.random.default_rng(0)
    media.save_image(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), folder / "photo.png")
    media.save_video(rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), folder / "clip.mp4", fps=4)
    (folder / "notes.txt").write_text("not media at all\n")
