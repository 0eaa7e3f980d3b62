"""An LPIPS-style perceptual distance (Zhang et al. 2018, "lin" variant on VGG16), for VQGAN training.

distance(x, y) = sum over taps t of mean over pixels of  w_t · (f_t(x)/|f_t(x)| - f_t(y)/|f_t(y)|)²

where f_t are VGG16's activations after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 (normalised
to unit length over channels at each pixel) and w_t ≥ 0 are LPIPS's learned per-channel weights.
Inputs are frames in [-1, 1], shifted and scaled by LPIPS's fixed constants first.

Nothing is shipped or downloaded: the weights come from one file the user supplies (`.safetensors`,
or a torch state dict `.pth` read with `weights_only=True`) holding
  - torchvision's ImageNet VGG16 `features.N.weight` / `features.N.bias` (vgg16-397923af.pth), and
  - LPIPS v0.1's `lin0.model.1.weight` ... `lin4.model.1.weight` (vgg.pth of
    github.com/richzhang/PerceptualSimilarity, shaped [1, C, 1, 1]).
Merge the two public files into one, e.g.:

    import torch
    vgg = torch.load("vgg16-397923af.pth")  # torchvision's ImageNet VGG16
    lin = torch.load("vgg.pth")              # LPIPS v0.1's linear layers for VGG
    merged = {k: v for k, v in vgg.items() if k.startswith("features.")}  # drop the classifier
    merged |= {k: v for k, v in lin.items() if k.startswith("lin")}
    torch.save(merged, "lpips_vgg16.pth")
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

# VGG16's conv widths, one tuple per stage; a 2x2 max-pool precedes every stage but the first, and
# LPIPS taps the ReLU that ends each stage (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# LPIPS's scaling layer: about ImageNet's mean/std, expressed for inputs in [-1, 1]
INPUT_SHIFT = (-0.030, -0.088, -0.188)
INPUT_SCALE = (0.458, 0.448, 0.450)
EPSILON = 1e-10  # LPIPS's guard against dividing by a zero feature vector


class PerceptualDistance(nn.Module):
    """Per-image LPIPS distance `[N]` between two batches of frames `[N, 3, H, W]` in [-1, 1].

    Build it with `load_perceptual_distance(path)`: constructed directly its weights are random.
    """

    def __init__(self):
        super().__init__()
        # one flat Sequential, so parameter names match torchvision's `features.N.weight` layout
        layers: list[nn.Module] = []
        self.taps: list[int] = []  # indices of the ReLUs whose outputs are compared
        channels = 3
        for stage, widths in enumerate(VGG16_STAGES):
            if stage > 0:
                layers.append(nn.MaxPool2d(2, 2))
            for width in widths:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
                channels = width
            self.taps.append(len(layers) - 1)
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(widths[-1], 1, 1, bias=False) for widths in VGG16_STAGES)

    def tapped_features(self, frames: torch.Tensor) -> list[torch.Tensor]:
        shift = frames.new_tensor(INPUT_SHIFT).view(1, -1, 1, 1)
        scale = frames.new_tensor(INPUT_SCALE).view(1, -1, 1, 1)
        x = (frames - shift) / scale
        tapped = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                tapped.append(x)
        return tapped

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        distance = x.new_zeros(len(x))
        for lin, fx, fy in zip(self.lins, self.tapped_features(x), self.tapped_features(y)):
            squared = (_unit_over_channels(fx) - _unit_over_channels(fy)) ** 2
            distance = distance + lin(squared).mean(dim=(1, 2, 3))
        return distance


def _unit_over_channels(features: torch.Tensor) -> torch.Tensor:
    return features / (torch.linalg.vector_norm(features, dim=1, keepdim=True) + EPSILON)


# ----------------------------------------------------------------------------- weights


def _file_key(name: str) -> str:
    """The key a parameter of `PerceptualDistance` has in the user's file (torchvision + LPIPS layouts)."""
    if name.startswith("lins."):
        return f"lin{name.split('.')[1]}.model.1.weight"
    return name


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such perceptual weights file")
    try:
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ValueError(f"{path}: not a readable .safetensors file or torch state dict ({error})") from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (name -> tensor)")
    return state


def load_perceptual_distance(path: str | Path) -> PerceptualDistance:
    """A frozen, eval-mode `PerceptualDistance` with the weights of `path` (see the module docstring).

    Every expected key must be present with its exact shape and no other key may be: a partial or
    mismatched file would silently compare the wrong features.
    """
    path = Path(path)
    state = _read_state_dict(path)
    with torch.device("meta"):  # shapes only: every parameter is replaced by the file's tensor
        model = PerceptualDistance()
    expected = {_file_key(name): tensor.shape for name, tensor in model.state_dict().items()}
    missing = [key for key in expected if key not in state]
    if missing:
        raise ValueError(f"{path}: missing perceptual weights {missing}")
    extra = sorted(key for key in state if key not in expected)
    if extra:
        raise ValueError(f"{path}: unexpected keys {extra} (keep only VGG16's features.* and LPIPS's lin*)")
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise ValueError(f"{path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(shape)}")
        if key.startswith("lin") and (state[key] < 0).any():
            raise ValueError(f"{path}: {key} has negative entries; LPIPS's linear weights are non-negative")
    model.load_state_dict({name: state[_file_key(name)].float() for name in model.state_dict()}, assign=True)
    return model.requires_grad_(False).eval()
