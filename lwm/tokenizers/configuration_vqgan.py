"""Configuration of the VQGAN vision tokenizer.

The `"lwm"` preset is the architecture of LWM's released VQGAN (aMUSEd/MaskGIT style: 256x256 frames
to 16x16 codes from a codebook of 8192 x 64); smaller presets are the same architecture, narrower.
Presets are JSON files in `lwm/presets/vqgan/`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from lwm.presets import preset_names, read_preset

QUANTIZERS = ("vq", "fsq", "lfq")


@dataclass
class VQGANConfig:
    # architecture
    resolution: int = 256  # frame side the model is trained for; any multiple of the downsample factor works
    in_channels: int = 3
    hidden_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 4, 6)  # one entry per level; all levels but the last halve H, W
    num_res_blocks: int = 2  # per level
    num_mid_blocks: int = 2  # between the levels and the latent, in the encoder and the decoder (LWM: always 2)
    z_channels: int = 64
    embed_dim: int = 64
    norm_groups: int = 32
    norm_eps: float = 1e-6
    # True: the encoder mixes nothing across patches (1x1 convolutions, 2x2 stride-2 downsampling,
    # per-position LayerNorm for GroupNorm), so a code depends on its own patch alone and a patch that does
    # not change keeps its code. LWM's encoder (False) sees most of a small frame from every code.
    local_encoder: bool = False
    # k > 1: time is compressed too. The first frame of a clip gets a grid of its own and each k frames
    # after it share one (1 + k·n frames -> 1 + n grids), causally, as MAGVIT-v2 and Cosmos do: the
    # encoder sees the first frame repeated k times in front, so an image is coded as a still clip and
    # images and videos share the codes. The per-frame features of a group are mixed by a 1x1
    # convolution, so a local encoder stays local. 1: every frame its own grid (LWM).
    temporal_compression: int = 1
    # m > 0: a video's frames after its first are told as motion where they can be (lwm.tokenizers.motion,
    # a codec's P-frames): a patch is "the patch (dy, dx) away in the frame before", |dy|, |dx| <= m, when
    # that reproduces it within `motion_tolerance` (mean absolute error in [-1, 1] pixels), else its code.
    # The (2m + 1)² motion tokens follow the codebook's codes. 0: every frame its own codes (LWM).
    motion_max_shift: int = 0
    motion_tolerance: float = 0.01
    # k > 0 (with motion codes): every k-th frame of a video is coded whole, as a codec's key frames, so a
    # reader finds the objects' looks again later in the video and a wrong shift carries k frames at most.
    # Frames count from the start of each video part; a part that continues another does not start with
    # one. 0: only a video's first frame is coded whole.
    motion_key_interval: int = 0

    # quantizer: "vq" (vector-quantize-pytorch VectorQuantize), "fsq" or "lfq"
    quantizer: str = "vq"
    codebook_size: int = 8192
    fsq_levels: tuple[int, ...] = ()  # only for "fsq"; codebook_size must equal their product
    commitment_weight: float = 0.25
    ema_decay: float = 0.95  # "vq" codebook EMA
    kmeans_init: bool = True  # "vq": initialise the codebook by k-means on the first batch
    dead_code_threshold: float = 2.0  # "vq": re-seed codes whose EMA usage falls below this (0 disables)
    lfq_entropy_weight: float = 0.1  # "lfq" entropy regulariser

    def __post_init__(self) -> None:
        self.channel_mult = tuple(self.channel_mult)
        self.fsq_levels = tuple(self.fsq_levels)
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {self.channel_mult}")
        for width in (self.hidden_channels, *self.level_channels):
            if width % self.norm_groups:
                raise ValueError(f"channel count {width} is not divisible by norm_groups={self.norm_groups}")
        if self.temporal_compression < 1:
            raise ValueError(f"temporal_compression must be at least 1, got {self.temporal_compression}")
        if self.motion_max_shift < 0 or self.motion_tolerance < 0:
            raise ValueError(f"motion_max_shift and motion_tolerance must be non-negative, got "
                             f"{self.motion_max_shift} and {self.motion_tolerance}")
        if self.motion_key_interval < 0:
            raise ValueError(f"motion_key_interval must be non-negative, got {self.motion_key_interval}")
        if self.motion_key_interval and not self.motion_max_shift:
            raise ValueError("motion_key_interval needs motion codes (motion_max_shift > 0)")
        if self.motion_max_shift and self.temporal_compression > 1:
            raise ValueError("motion codes and temporal_compression > 1 are two ways to code time: choose one")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be at least 1, got {self.num_res_blocks}")
        if self.num_mid_blocks < 1:
            raise ValueError(f"num_mid_blocks must be at least 1, got {self.num_mid_blocks}")
        if self.resolution % self.downsample_factor:
            raise ValueError(
                f"resolution {self.resolution} is not divisible by the downsample factor {self.downsample_factor}"
            )
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if self.quantizer == "fsq" and math.prod(self.fsq_levels or (0,)) != self.codebook_size:
            raise ValueError(
                f"fsq: codebook_size {self.codebook_size} must equal the product of fsq_levels {self.fsq_levels}"
            )
        if self.quantizer == "lfq" and (self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1)):
            raise ValueError(f"lfq: codebook_size must be a power of two, got {self.codebook_size}")

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.hidden_channels * mult for mult in self.channel_mult)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def grid_size(self) -> int:
        """Codes per side of a `resolution`-sized frame."""
        return self.resolution // self.downsample_factor

    @property
    def codes_per_frame(self) -> int:
        return self.grid_size**2

    @property
    def num_motions(self) -> int:
        return (2 * self.motion_max_shift + 1) ** 2 if self.motion_max_shift else 0

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict) -> "VQGANConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown VQGANConfig fields: {unknown}")
        if "num_mid_blocks" not in values:  # saved before the field existed, when the mid block had num_res_blocks
            values = {**values, "num_mid_blocks": values.get("num_res_blocks", cls.num_res_blocks)}
        return cls(**values)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "VQGANConfig":
        try:
            values = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"VQGAN config not found: {path}") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        return cls.from_dict(values)

    @classmethod
    def preset_names(cls) -> list[str]:
        return preset_names("vqgan")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VQGANConfig":
        """A named preset from `lwm/presets/vqgan/` (e.g. "lwm", "tiny", "world"), or a path to a JSON file."""
        return cls.from_dict({**read_preset("vqgan", name), **overrides})
