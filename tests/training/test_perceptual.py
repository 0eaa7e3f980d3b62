"""The LPIPS-style perceptual distance: it matches a plain F.conv2d implementation, its weights file is
validated key by key, and `lwm tokenizer train` adds it to the loss only when given its weights."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lwm import media
from lwm.cli import main as lwm_main
from lwm.training import load_perceptual_distance
from tests.training.runs import write_config

# torchvision's vgg16 `features` indices of the 13 convs; a max-pool sits right before 5, 10, 17 and
# 24, and LPIPS reads the ReLU after 2, 7, 14, 21 and 28 (relu1_2 ... relu5_3)
CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256), 14: (256, 256),
         17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512)}
POOLED = (5, 10, 17, 24)
TAPPED = (2, 7, 14, 21, 28)


def random_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """A file's worth of weights in the torchvision + LPIPS key layout, He-scaled so features stay O(1)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for index, (c_in, c_out) in CONVS.items():
        he_scale = math.sqrt(2 / (9 * c_in))
        state[f"features.{index}.weight"] = he_scale * torch.randn(c_out, c_in, 3, 3, generator=generator)
        state[f"features.{index}.bias"] = 0.1 * torch.randn(c_out, generator=generator)
    for tap, index in enumerate(TAPPED):
        state[f"lin{tap}.model.1.weight"] = torch.rand(1, CONVS[index][1], 1, 1, generator=generator)
    return state


def reference_distance(state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS written out layer by layer (float64)."""
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)

    def tapped(frames):
        h, taps = (frames - shift) / scale, []
        for index in CONVS:
            if index in POOLED:
                h = F.max_pool2d(h, kernel_size=2, stride=2)
            h = F.relu(F.conv2d(h, state[f"features.{index}.weight"].double(), state[f"features.{index}.bias"].double(),
                                padding=1))
            if index in TAPPED:
                taps.append(h)
        return taps

    total = torch.zeros(len(x), dtype=torch.float64)
    for tap, (a, b) in enumerate(zip(tapped(x), tapped(y))):
        a = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        weights = state[f"lin{tap}.model.1.weight"].double().view(1, -1, 1, 1)
        total += ((a - b) ** 2 * weights).sum(dim=1).mean(dim=(1, 2))
    return total


@pytest.fixture(scope="module")
def weights():
    return random_weights()


@pytest.fixture(scope="module")
def weights_file(weights, tmp_path_factory):
    path = tmp_path_factory.mktemp("perceptual") / "lpips_vgg16.safetensors"
    save_file(weights, path)
    return path


def test_distance_matches_a_layer_by_layer_reference(weights, weights_file, tmp_path):
    distance = load_perceptual_distance(weights_file)
    assert not distance.training and not any(p.requires_grad for p in distance.parameters())
    torch.save(weights, tmp_path / "lpips_vgg16.pth")  # the .pth route reads the same weights
    from_pth = load_perceptual_distance(tmp_path / "lpips_vgg16.pth")
    assert all(torch.equal(a, b) for a, b in zip(distance.state_dict().values(), from_pth.state_dict().values()))

    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 3, 32, 32, dtype=torch.float64) * 2 - 1
    expected = reference_distance(weights, x, y)
    torch.testing.assert_close(distance.double()(x, y), expected, rtol=1e-9, atol=1e-12)
    assert (expected > 0).all()
    assert torch.equal(distance(x, x), torch.zeros(3, dtype=torch.float64))


def test_gradient_reaches_the_frames_only(weights_file):
    distance = load_perceptual_distance(weights_file)
    x = torch.zeros(2, 3, 16, 16, requires_grad=True)
    distance(x, torch.rand(2, 3, 16, 16) * 2 - 1).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in distance.parameters())


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("features.28.bias"), "missing perceptual weights ['features.28.bias']"),
    (lambda s: s.update({"lin2.model.1.weight": torch.rand(1, 128, 1, 1)}),
     "lin2.model.1.weight has shape (1, 128, 1, 1), expected (1, 256, 1, 1)"),
    (lambda s: s.update({"classifier.0.weight": torch.rand(4, 4)}), "unexpected keys ['classifier.0.weight']"),
    (lambda s: s.update({"lin0.model.1.weight": -torch.rand(1, 64, 1, 1)}), "lin0.model.1.weight has negative"),
], ids=["missing", "misshaped", "extra", "negative"])
def test_loader_refuses_a_file_that_does_not_fit(weights, tmp_path, change, message):
    state = dict(weights)
    change(state)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError) as error:
        load_perceptual_distance(tmp_path / "bad.safetensors")
    assert message in str(error.value)


def test_loader_refuses_a_file_that_is_not_a_state_dict(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth: not a readable"):
        load_perceptual_distance(tmp_path / "bad.pth")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for number in range(5):
        media.save_image(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), folder / f"{number}.png")
    return folder


def train_command(images, out, steps: int, *extra: str) -> list[str]:
    """`lwm tokenizer train` of the tiny VQGAN on the images for `steps` steps, its config beside `out`."""
    raw = {"data": [str(images)], "output_dir": str(out), "model": "tiny", "batch_size": 2, "frames_per_clip": 1,
           "log_every": 1, "save_every": 2, "eval_frames": 2}
    config = write_config(raw, out.parent / f"{out.name}.yaml")
    return ["tokenizer", "train", str(config), f"max_steps={steps}", *extra]


def logged_steps(out) -> list[dict]:
    return [record for record in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in record]


def test_training_adds_the_perceptual_term_and_resumes(images, weights_file, tmp_path, capsys):
    with_perceptual = [f"perceptual_weights={weights_file}", "perceptual_weight=0.1"]
    assert lwm_main(train_command(images, tmp_path / "plain", 1)) == 0
    assert lwm_main(train_command(images, tmp_path / "run", 2, *with_perceptual)) == 0
    logged = logged_steps(tmp_path / "run")
    assert [record["step"] for record in logged] == [1, 2]
    assert all(record["perceptual"] > 0 and math.isfinite(record["loss"]) for record in logged)
    assert "perceptual" not in logged_steps(tmp_path / "plain")[0]
    # same seed, same first batch, same initial model: the first loss differs by exactly the weighted term
    plain_loss = logged_steps(tmp_path / "plain")[0]["loss"]
    assert logged[0]["loss"] == pytest.approx(plain_loss + 0.1 * logged[0]["perceptual"], rel=1e-5)

    # the perceptual network is neither checkpointed nor saved with the VQGAN, and resuming works
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "step-2").glob("model*")) == ["model.safetensors"]
    assert not any(key.startswith(("features.", "lins.")) for key in load_file(tmp_path / "run" / "model.safetensors"))
    capsys.readouterr()
    assert lwm_main(train_command(images, tmp_path / "run", 3, *with_perceptual, "--resume")) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [record["step"] for record in logged_steps(tmp_path / "run")] == [1, 2, 3]


def test_cli_refuses_a_perceptual_weight_without_weights(images, weights_file, tmp_path, capsys):
    assert lwm_main(train_command(images, tmp_path / "out", 1, "perceptual_weight=0.1")) == 1
    assert "perceptual_weight > 0 needs perceptual_weights=PATH" in capsys.readouterr().err
    assert lwm_main(train_command(images, tmp_path / "out", 1, f"perceptual_weights={weights_file}")) == 1
    assert "perceptual_weight is 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written
