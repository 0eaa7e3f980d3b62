"""Reconstruction metrics for the vision tokenizer: PSNR, SSIM, codebook usage and perplexity, and
for clips the temporal stability of the codes.

Pixels are `[N, 3, H, W]` tensors in [-1, 1] (the VQGAN's range); PSNR and SSIM are reported on the
usual 8-bit scale (peak 255), i.e. after mapping [-1, 1] onto [0, 255].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm import tqdm


def psnr(reference: torch.Tensor, reconstruction: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB over the whole batch (pixels in [-1, 1], peak-to-peak 2)."""
    mse = F.mse_loss(reconstruction.float().clamp(-1, 1), reference.float()).item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


SSIM_WINDOW = 11


def ssim(reference: torch.Tensor, reconstruction: torch.Tensor, window: int = SSIM_WINDOW, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004; Gaussian window, per channel), pixels in [-1, 1]."""
    if min(reference.shape[-2:]) < window:
        raise ValueError(f"SSIM needs frames of at least {window}x{window} pixels, got {tuple(reference.shape[-2:])}")
    # float64: the variances are differences of nearly equal blurred moments
    x = (reference.double() + 1) / 2
    y = (reconstruction.double().clamp(-1, 1) + 1) / 2
    channels = x.shape[1]
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    gauss = torch.exp(-(coords**2) / (2 * sigma**2))
    gauss = gauss / gauss.sum()
    kernel = (gauss[:, None] * gauss[None, :]).expand(channels, 1, window, window).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=channels)  # valid region only, as the reference implementation

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean().item()


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> tuple[float, float]:
    """(fraction of the codebook used, perplexity of the code distribution) over a set of codes."""
    counts = torch.bincount(codes.flatten().long().cpu(), minlength=codebook_size).double()
    probs = counts[counts > 0] / counts.sum()
    return (counts > 0).double().mean().item(), math.exp(-(probs * probs.log()).sum().item())


def code_stability(codes: torch.Tensor, pixels: torch.Tensor, clip_lengths: list[int]) -> float | None:
    """Of the patches whose pixels did not change since the previous frame of their clip, the fraction
    that kept their code.

    codes `[N, h, w]` and pixels `[N, 3, H, W]` are the frames of consecutive clips of `clip_lengths`
    frames, in order. Codes that depend only on what their patch shows score 1. A tokenizer whose codes
    also carry the rest of the frame scores less, and its unchanged background becomes, for a model
    drawing the next frame, codes to guess. None when no patch stayed the same.
    """
    if sum(clip_lengths) != len(codes) or len(codes) != len(pixels):
        raise ValueError(f"clip lengths {clip_lengths} do not add up to the {len(codes)} frames of codes "
                         f"and the {len(pixels)} of pixels")
    patch = pixels.shape[-1] // codes.shape[-1]
    patches = rearrange(pixels, "n c (h p) (w q) -> n h w (c p q)", p=patch, q=patch)
    unchanged = (patches[1:] == patches[:-1]).all(-1)
    kept = codes[1:] == codes[:-1]
    clip_starts = torch.tensor(clip_lengths).cumsum(0)[:-1]
    unchanged[clip_starts - 1] = False  # the first frame of a clip has no previous frame
    return kept[unchanged].double().mean().item() if unchanged.any() else None


@torch.no_grad()
def evaluate_reconstruction(model, pixels: torch.Tensor, batch_size: int = 32, progress: bool = False,
                            clip_lengths: list[int] | None = None) -> dict:
    """Encode and decode `pixels` `[N, 3, H, W]` with a VQGAN; return PSNR, SSIM, usage and perplexity,
    and, when the frames are clips of `clip_lengths` frames, the codes' stability (`code_stability`).

    SSIM needs frames at least as large as its 11-pixel window; smaller ones (test-sized VQGANs) get None.
    """
    was_training = model.training
    model.eval()
    if model.temporal_compression > 1:
        if clip_lengths is None:
            raise ValueError("a VQGAN with temporal compression codes clips: pass their clip_lengths")
        pixels, codes, reconstruction, grid_pixels, clip_lengths = _reconstruct_clips(model, pixels, clip_lengths, progress)
    else:
        codes, reconstruction = _reconstruct_frames(model, pixels, batch_size, progress)
        grid_pixels = pixels
    model.train(was_training)
    usage, perplexity = codebook_usage(codes, model.codebook_size)
    metrics = {
        "frames": len(pixels),
        "psnr": psnr(pixels, reconstruction),
        "ssim": ssim(pixels, reconstruction) if min(pixels.shape[-2:]) >= SSIM_WINDOW else None,
        "codebook_usage": usage,
        "perplexity": perplexity,
    }
    if clip_lengths is not None:
        metrics["code_stability"] = code_stability(codes, grid_pixels, clip_lengths)
    return metrics


def _reconstruct_frames(model, pixels: torch.Tensor, batch_size: int, progress: bool):
    device = next(model.parameters()).device
    codes, reconstructions = [], []
    for chunk in tqdm(pixels.split(batch_size), desc="evaluating", disable=not progress):
        chunk_codes = model.encode(chunk.to(device))
        codes.append(chunk_codes.cpu())
        reconstructions.append(model.decode(chunk_codes).cpu())
    return torch.cat(codes), torch.cat(reconstructions)


def _reconstruct_clips(model, pixels: torch.Tensor, clip_lengths: list[int], progress: bool):
    """Each clip, cut to the 1 + k·n frames a temporally compressing VQGAN codes, through the model.

    Returns the frames kept, the codes `[grids, h, w]`, the reconstruction, the pixels each grid codes
    (its k frames stacked along the channels, the first frame repeated in front as the encoder sees it)
    and the clips' lengths in grids.
    """
    k, device = model.temporal_compression, next(model.parameters()).device
    kept, codes, reconstructions, grid_pixels = [], [], [], []
    for clip in tqdm(pixels.split(clip_lengths), desc="evaluating", disable=not progress):
        clip = clip[: 1 + (len(clip) - 1) // k * k]
        clip_codes = model.encode(clip[None].to(device))
        kept.append(clip)
        codes.append(clip_codes[0].cpu())
        reconstructions.append(model.decode(clip_codes)[0].cpu())
        padded = torch.cat([clip[:1].expand(k - 1, -1, -1, -1), clip])
        grid_pixels.append(rearrange(padded, "(t k) c h w -> t (k c) h w", k=k))
    return (torch.cat(kept), torch.cat(codes), torch.cat(reconstructions), torch.cat(grid_pixels),
            [len(c) for c in codes])


def format_metrics(metrics: dict) -> str:
    return (
        f"frames {metrics['frames']}  PSNR {metrics['psnr']:.2f} dB  "
        f"SSIM {'n/a' if metrics['ssim'] is None else format(metrics['ssim'], '.4f')}  "
        f"codebook usage {metrics['codebook_usage']:.1%}  perplexity {metrics['perplexity']:.1f}"
    )
