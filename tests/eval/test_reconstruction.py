"""Reconstruction metrics (lwm.eval.reconstruction) against closed-form values."""

from __future__ import annotations

import math

import pytest
import torch

from lwm.eval.reconstruction import code_stability, codebook_usage, evaluate_reconstruction, format_metrics, psnr, ssim


def test_psnr_matches_its_definition_on_the_8_bit_scale():
    reference = torch.zeros(2, 3, 8, 8)
    off_by_ten_levels = reference + 10 / 127.5  # every pixel 10/255 of the range away
    assert psnr(reference, off_by_ten_levels) == pytest.approx(20 * math.log10(255 / 10), abs=1e-4)
    assert psnr(reference, reference) == math.inf
    assert psnr(reference, reference + 5) == pytest.approx(10 * math.log10(4 / 1))  # clipped to the range


def test_ssim_of_flat_images_has_a_closed_form():
    a, b = 0.2, 0.6  # in [0, 1]; SSIM = (2ab + c1) / (a^2 + b^2 + c1) when both images are flat
    c1 = 0.01**2
    x = torch.full((1, 3, 16, 16), a * 2 - 1)
    y = torch.full((1, 3, 16, 16), b * 2 - 1)
    assert ssim(x, y) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-5)
    noisy = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert ssim(noisy, noisy) == pytest.approx(1.0, abs=1e-5)
    assert ssim(noisy, (noisy + 0.3 * torch.randn_like(noisy)).clamp(-1, 1)) < 0.9


def test_codebook_usage_and_perplexity():
    usage, perplexity = codebook_usage(torch.tensor([0, 0, 1, 3]), 4)
    assert usage == 0.75
    assert perplexity == pytest.approx(math.exp(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))))
    assert codebook_usage(torch.arange(8), 8) == pytest.approx((1.0, 8.0))


def test_ssim_refuses_frames_smaller_than_its_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


class _Identity(torch.nn.Module):
    """A "VQGAN" that reconstructs perfectly, with one code per pixel row."""

    codebook_size = 4
    temporal_compression = 1

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def encode(self, pixels):
        self.pixels = pixels
        return torch.arange(pixels.shape[-2]).remainder(4).expand(len(pixels), -1)

    def decode(self, codes):
        return self.pixels


@pytest.mark.parametrize("size, has_ssim", [(8, False), (16, True)])
def test_reconstruction_report_leaves_ssim_to_frames_that_fit_its_window(size, has_ssim):
    pixels = torch.rand(3, 3, size, size) * 2 - 1
    metrics = evaluate_reconstruction(_Identity(), pixels, batch_size=2)
    assert metrics["psnr"] == math.inf and metrics["codebook_usage"] == 1.0 and metrics["frames"] == 3
    assert (metrics["ssim"] == pytest.approx(1.0)) if has_ssim else metrics["ssim"] is None
    assert ("SSIM n/a" in format_metrics(metrics)) != has_ssim


def _clip_with_a_moving_square(frames: int = 3, size: int = 16) -> torch.Tensor:
    """A dark frame with a bright 4x4 square moving 4 pixels right per frame: patch-aligned motion."""
    pixels = torch.full((frames, 3, size, size), -1.0)
    for t in range(frames):
        pixels[t, :, 4:8, 4 * t:4 * t + 4] = 1.0
    return pixels


def _patch_codes(pixels: torch.Tensor, patch: int = 4) -> torch.Tensor:
    """Codes that depend only on the patch: 1 where it holds the square, 0 elsewhere."""
    return (pixels[:, 0].unfold(1, patch, patch).unfold(2, patch, patch).amax((-1, -2)) > 0).long()


def test_codes_that_depend_only_on_their_patch_are_perfectly_stable():
    pixels = _clip_with_a_moving_square()
    assert code_stability(_patch_codes(pixels), pixels, [3]) == 1.0


def test_codes_that_change_with_the_rest_of_the_frame_lose_stability():
    pixels = _clip_with_a_moving_square()
    codes = _patch_codes(pixels)
    # codes that also say whether the square's column is left of the patch's: each frame, the column the
    # square moves into flips that bit in every row
    columns = torch.arange(4)
    square_column = torch.arange(3)[:, None]
    contextual = codes + 2 * (columns[None, :] > square_column).long()[:, None, :]
    # per transition 14 of 16 patches keep their pixels (not the square's old and new place); 3 of them,
    # the rest of the column the square moves into, change code
    assert code_stability(contextual, pixels, [3]) == pytest.approx(22 / 28)


def test_code_stability_does_not_compare_frames_across_clips():
    pixels = _clip_with_a_moving_square()
    codes = _patch_codes(pixels)
    codes[2] = 5  # frame 2 begins a new clip: its codes may be anything
    assert code_stability(codes, pixels, [2, 1]) == 1.0
    assert code_stability(codes, pixels, [3]) < 1.0
    assert code_stability(codes[:1], pixels[:1], [1]) is None  # no frame has a previous one
    with pytest.raises(ValueError, match="do not add up"):
        code_stability(codes, pixels, [2])
