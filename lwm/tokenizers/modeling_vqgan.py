"""The VQGAN vision tokenizer: frames in [-1, 1] <-> grids of discrete codes.

The encoder and decoder are exactly LWM's (aMUSEd/MaskGIT VQGAN): ResNet blocks with GroupNorm and
swish, stride-2 convolutions after a bottom/right zero pad to downsample, nearest x2 + conv to
upsample, 1x1 convolutions around the quantizer, and no attention. So the official weights load
one-to-one (see `lwm.convert.vqgan_pickle`), and the same class, narrower, is what we train.
`local_encoder` narrows what each code sees to its own patch (see `VQGANConfig`).

The quantizer comes from vector-quantize-pytorch: `VectorQuantize` (Euclidean nearest neighbour,
EMA codebook, k-means init, dead-code replacement), or FSQ / LFQ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch import nn
from vector_quantize_pytorch import FSQ, LFQ, VectorQuantize

from lwm.tokenizers.configuration_vqgan import VQGANConfig
from lwm.tokenizers.motion import decode_motion, with_motions

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _norm(channels: int, config: VQGANConfig, local: bool = False) -> nn.Module:
    if local:
        return ChannelNorm(channels, eps=config.norm_eps)
    return nn.GroupNorm(config.norm_groups, channels, eps=config.norm_eps)


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each position of `[B, C, H, W]`: a normalisation that, unlike
    GroupNorm's statistics over the whole frame, lets no patch depend on another."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def _conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


class ResnetBlock(nn.Module):
    """local: 1x1 convolutions and per-position normalisation, so no position sees another."""

    def __init__(self, in_channels: int, out_channels: int, config: VQGANConfig, local: bool = False):
        super().__init__()
        kernel_size = 1 if local else 3
        self.norm1 = _norm(in_channels, config, local)
        self.conv1 = _conv(in_channels, out_channels, kernel_size)
        self.norm2 = _norm(out_channels, config, local)
        self.conv2 = _conv(out_channels, out_channels, kernel_size)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class Downsample(nn.Module):
    """local: a 2x2 stride-2 convolution, which tiles the input instead of overlapping neighbours."""

    def __init__(self, channels: int, local: bool = False):
        super().__init__()
        kernel_size = 2 if local else 3
        self.conv = nn.Conv2d(channels, channels, kernel_size, stride=2)
        self.pad = kernel_size - 2  # LWM's 3x3 pads bottom and right only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, self.pad, 0, self.pad)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = _conv(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: ResNet blocks, then an optional resampling."""

    def __init__(self, in_channels, out_channels, num_blocks, resample: nn.Module | None, config: VQGANConfig,
                 local: bool = False):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(ResnetBlock(a, b, config, local) for a, b in zip(widths, widths[1:]))
        self.resample = resample if resample is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return self.resample(x)


class Encoder(nn.Module):
    def __init__(self, config: VQGANConfig):
        super().__init__()
        widths = config.level_channels
        last = len(widths) - 1
        local = config.local_encoder
        kernel_size = 1 if local else 3
        self.conv_in = _conv(config.in_channels, config.hidden_channels, kernel_size)
        self.down = nn.ModuleList(
            Level(
                config.hidden_channels if i == 0 else widths[i - 1],
                widths[i],
                config.num_res_blocks,
                Downsample(widths[i], local) if i < last else None,
                config,
                local,
            )
            for i in range(len(widths))
        )
        self.mid = nn.ModuleList(
            ResnetBlock(widths[-1], widths[-1], config, local) for _ in range(config.num_mid_blocks)
        )
        self.norm_out = _norm(widths[-1], config, local)
        self.conv_out = _conv(widths[-1], config.z_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        for block in self.mid:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, config: VQGANConfig):
        super().__init__()
        widths = config.level_channels
        self.conv_in = _conv(config.z_channels, widths[-1], 3)
        self.mid = nn.ModuleList(ResnetBlock(widths[-1], widths[-1], config) for _ in range(config.num_mid_blocks))
        # `up[i]` is level i (as the encoder's `down[i]`); it runs from the last level to level 0
        self.up = nn.ModuleList(
            Level(
                widths[min(i + 1, len(widths) - 1)],
                widths[i],
                config.num_res_blocks + 1,
                Upsample(widths[i]) if i > 0 else None,
                config,
            )
            for i in range(len(widths))
        )
        self.norm_out = _norm(widths[0], config)
        # with temporal compression a grid decodes to its k frames, stacked along the channels
        self.conv_out = _conv(widths[0], config.in_channels * config.temporal_compression, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for block in self.mid:
            x = block(x)
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


# ----------------------------------------------------------------------------- quantizers
# Each maps z [B, D, h, w] to (quantized z, codes [B, h, w], auxiliary loss), and codes back to z.


class VectorQuantizer(nn.Module):
    def __init__(self, config: VQGANConfig):
        super().__init__()
        self.vq = VectorQuantize(
            dim=config.embed_dim,
            codebook_size=config.codebook_size,
            decay=config.ema_decay,
            kmeans_init=config.kmeans_init,
            threshold_ema_dead_code=config.dead_code_threshold,
            commitment_weight=config.commitment_weight,
            accept_image_fmap=True,
        )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.vq(z)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.vq.get_output_from_indices(codes)

    @property
    def codebook(self) -> torch.Tensor:
        return self.vq.codebook


class FiniteScalarQuantizer(nn.Module):
    def __init__(self, config: VQGANConfig):
        super().__init__()
        self.fsq = FSQ(levels=list(config.fsq_levels), dim=config.embed_dim)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        quantized, codes = self.fsq(z)
        return quantized, codes, z.new_zeros(())

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.fsq.indices_to_codes(codes)


class LookupFreeQuantizer(nn.Module):
    def __init__(self, config: VQGANConfig):
        super().__init__()
        self.lfq = LFQ(
            dim=config.embed_dim,
            codebook_size=config.codebook_size,
            entropy_loss_weight=config.lfq_entropy_weight,
            commitment_loss_weight=config.commitment_weight,
        )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        quantized, codes, aux_loss = self.lfq(z)
        return quantized, codes, aux_loss

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.lfq.indices_to_codes(codes)


QUANTIZER_CLASSES = {"vq": VectorQuantizer, "fsq": FiniteScalarQuantizer, "lfq": LookupFreeQuantizer}


# ----------------------------------------------------------------------------- the model


@dataclass
class VQGANOutput:
    reconstruction: torch.Tensor  # [B, 3, H, W], not clipped (the training loss sees the raw output)
    codes: torch.Tensor  # [B, h, w]
    quantizer_loss: torch.Tensor  # commitment / codebook / entropy terms, already weighted


class VQGAN(nn.Module):
    """Frames `[B, 3, H, W]` in [-1, 1] <-> codes `[B, H/f, W/f]`, f = `config.downsample_factor`; clips
    `[B, T, 3, H, W]` <-> `[B, T', h, w]`, T' = T without temporal compression, else 1 + (T - 1) / k."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        k = config.temporal_compression
        self.temporal_fusion = nn.Conv2d(config.z_channels * k, config.z_channels, 1) if k > 1 else None
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.quantize = QUANTIZER_CLASSES[config.quantizer](config)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.decoder = Decoder(config)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def num_tokens(self) -> int:
        """Ids a frame's position can take: the codebook's codes, then the motion tokens (if any)."""
        return self.config.codebook_size + self.config.num_motions

    @property
    def grid_size(self) -> int:
        """Codes per side for a frame of `config.resolution`."""
        return self.config.grid_size

    @property
    def codes_per_frame(self) -> int:
        return self.config.codes_per_frame

    def code_vectors(self) -> torch.Tensor:
        """`[codebook_size, embed_dim]`: the latent each code stands for (what the decoder draws it from)."""
        codes = torch.arange(self.codebook_size, device=self.quant_conv.weight.device)[None, :, None]
        return self.quantize.lookup(codes)[0, :, :, 0].T.detach()

    @property
    def temporal_compression(self) -> int:
        return self.config.temporal_compression

    def forward(self, pixels: torch.Tensor) -> VQGANOutput:
        """Frames `[B, 3, H, W]` or clips `[B, T, 3, H, W]` -> their reconstruction, codes and quantizer loss."""
        quantized, codes, quantizer_loss = self.quantize(self._latents(pixels))
        reconstruction = self._pixels(self.post_quant_conv(quantized), pixels.shape[:-3])
        return VQGANOutput(reconstruction, self._grids(codes, pixels), quantizer_loss.sum())

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels `[B, 3, H, W]` in [-1, 1] -> codes `[B, h, w]` (LongTensor; row-major token order);
        clips `[B, T, 3, H, W]` -> `[B, T', h, w]`."""
        _, codes, _ = self.quantize(self._latents(pixels))
        return self._grids(codes, pixels)

    def _grids(self, codes: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """The quantizer's codes `[B·T', h, w]` as `[B, h, w]` for frames or `[B, T', h, w]` for clips."""
        if pixels.ndim == 4:
            return codes.long()
        return codes.long().reshape(len(pixels), -1, *codes.shape[-2:])

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `[B, h, w]` -> pixels `[B, 3, h*f, w*f]` clipped to [-1, 1]; `[B, T', h, w]` -> clips."""
        self._check_codes(codes)
        z = self.post_quant_conv(self.quantize.lookup(codes.long().flatten(0, -3)))
        lead = codes.shape[:-2]
        frames = (lead[0], 1 + (lead[1] - 1) * self.temporal_compression) if len(lead) == 2 else lead
        return self._pixels(z, frames).clamp(-1.0, 1.0)

    def _latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frames `[B, 3, H, W]` or clips `[B, T, 3, H, W]` -> the quantizer's input `[B·T', D, h, w]`."""
        self._check_pixels(pixels)
        features = self.encoder(pixels.flatten(0, -4))
        k = self.temporal_compression
        if k > 1:
            clips = features.reshape(-1, 1 if pixels.ndim == 4 else pixels.shape[1], *features.shape[1:])
            padded = torch.cat([clips[:, :1].expand(-1, k - 1, -1, -1, -1), clips], dim=1)
            features = self.temporal_fusion(rearrange(padded, "b (t k) c h w -> (b t) (k c) h w", k=k))
        return self.quant_conv(features)

    def _pixels(self, z: torch.Tensor, frames: tuple[int, ...]) -> torch.Tensor:
        """Decoded `[B·T', D, h, w]` -> pixels shaped `[*frames, 3, H, W]` (frames: `(B,)` or `(B, T)`)."""
        out = self.decoder(z)
        k = self.temporal_compression
        if k == 1:
            return out.reshape(*frames, *out.shape[1:])
        clips = rearrange(out, "(b t) (k c) h w -> b (t k) c h w", b=frames[0], k=k)[:, k - 1 :]  # the front padding
        return clips[:, 0] if len(frames) == 1 else clips

    def encode_video(self, frames: torch.Tensor, chunk_size: int = 16, context: torch.Tensor | None = None) -> torch.Tensor:
        """Frames `[..., 3, H, W]` (e.g. `[T, ...]` or `[B, T, ...]`) -> codes `[..., h, w]`. With temporal
        compression the frames are one clip `[T, ...]` (or clips `[B, T, ...]`) and the codes `[T', h, w]`.
        With motion codes they are one video `[T, ...]` (or videos `[B, T, ...]`), and `context`, the
        frames `[T0, 3, H, W]` they continue, codes their first frame as motion from its last one."""
        if frames.ndim < 4:
            raise ValueError(f"expected frames shaped [..., 3, H, W] with a leading frame dim, got {tuple(frames.shape)}")
        codes = self._in_chunks(self.encode, frames, 3, chunk_size)
        if not self.config.motion_max_shift:
            return codes
        before = None if context is None else context[-1]
        return self._per_video(lambda video, video_codes: with_motions(video_codes, video, self.config, before), frames, codes)

    def decode_video(self, codes: torch.Tensor, chunk_size: int = 16, context: torch.Tensor | None = None) -> torch.Tensor:
        """Codes `[..., h, w]` -> frames `[..., 3, H, W]` (the inverse of `encode_video`); `context`: the
        codes `[T0, h, w]` of the frames these continue (read by motion codes, whose frames are drawn
        from the frame before)."""
        if codes.ndim < 3:
            raise ValueError(f"expected codes shaped [..., h, w] with a leading frame dim, got {tuple(codes.shape)}")
        if self.config.motion_max_shift:
            before = None if context is None else decode_motion(self, context)[-1]
            return self._per_video(lambda video: decode_motion(self, video, before), codes)
        return self._in_chunks(self.decode, codes, 2, chunk_size)

    @staticmethod
    def _per_video(step, *videos: torch.Tensor) -> torch.Tensor:
        """`step` on each video of `videos`: one video each (codes `[T, h, w]`, frames `[T, 3, H, W]`) or a
        batch of them (a leading `B`); the last of `videos` is codes."""
        codes = videos[-1]
        if codes.ndim == 3:
            return step(*videos)
        if codes.ndim != 4:
            raise ValueError(f"motion codes: expected one video [T, ...] or videos [B, T, ...], got codes {tuple(codes.shape)}")
        return torch.stack([step(*video) for video in zip(*videos)])

    def _in_chunks(self, step, tensor: torch.Tensor, frame_dims: int, chunk_size: int) -> torch.Tensor:
        """`step` (encode or decode) over the frames of `tensor` (its last `frame_dims` dims are one frame),
        `chunk_size` at a time so memory stays bounded; with temporal compression whole clips at a time."""
        if self.temporal_compression > 1:
            clips = tensor if tensor.ndim == frame_dims + 2 else tensor[None]
            out = torch.cat([step(chunk) for chunk in clips.split(max(1, chunk_size // clips.shape[1]))])
            return out if tensor.ndim == frame_dims + 2 else out[0]
        flat = tensor.reshape(-1, *tensor.shape[-frame_dims:])
        out = torch.cat([step(chunk) for chunk in flat.split(chunk_size)])
        return out.reshape(*tensor.shape[:-frame_dims], *out.shape[1:])

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        factor = self.config.downsample_factor
        if pixels.ndim not in (4, 5) or pixels.shape[-3] != self.config.in_channels:
            raise ValueError(
                f"expected pixels shaped [B, {self.config.in_channels}, H, W] or clips [B, T, "
                f"{self.config.in_channels}, H, W], got {tuple(pixels.shape)}"
            )
        k = self.temporal_compression
        if pixels.ndim == 5 and (pixels.shape[1] - 1) % k:
            raise ValueError(f"clips of {pixels.shape[1]} frames: temporal compression {k} codes 1 + {k}·n frames")
        if pixels.shape[-2] % factor or pixels.shape[-1] % factor:
            raise ValueError(f"frame size {tuple(pixels.shape[-2:])} is not a multiple of {factor}")
        if not pixels.is_floating_point():
            raise ValueError(f"expected float pixels in [-1, 1], got {pixels.dtype} (use lwm.media.preprocess)")

    def _check_codes(self, codes: torch.Tensor) -> None:
        if codes.ndim not in (3, 4):
            raise ValueError(f"expected codes shaped [B, h, w] or [B, T', h, w], got {tuple(codes.shape)}")
        if codes.is_floating_point() or codes.is_complex():
            raise ValueError(f"expected integer codes, got {codes.dtype}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got values in "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_NAME)
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        save_file(state, directory / WEIGHTS_NAME, metadata={"format": "pt", "model": "lwm-vqgan"})

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "VQGAN":
        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory}: no {name}; expected a folder written by VQGAN.save_pretrained")
        model = cls(VQGANConfig.load(directory / CONFIG_NAME))
        state = load_file(directory / WEIGHTS_NAME, device=str(device))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{directory}: weights do not match the config (missing {missing}, unexpected {unexpected})")
        return model.to(device).eval()
