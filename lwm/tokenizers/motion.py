"""Motion codes: a video's later frames told as patches moved from the frame before, as a codec's P-frames.

A frame-by-frame VQGAN gives an object that moves by one pixel new codes wherever it lies, so a decoder
has to learn a translation of codes. With `VQGANConfig.motion_max_shift` m > 0, the first frame of a video
keeps the VQGAN's codes (an image is coded exactly as before) and every later patch is one token: either
"the patch (dy, dx) away in the frame before" (one of (2m + 1)² motion tokens), when moving the previous
frame so reproduces the true patch, or the VQGAN's code of the patch when no shift does. An object moving
at constant speed is then one motion token at every patch it covers, frame after frame, and background
that stays plain is the still token.

With `VQGANConfig.motion_key_interval` k > 0, every k-th frame is coded whole too (a codec's I-frames), so
the objects' colours and shapes are told again for a reader.

Motion token i (after the VQGAN's `codebook_size` codes) is the shift `motion_shifts(m)[i]`. The choice is
made on the true frames; a patch given by a shift copies the *decoded* frame before (a closed loop, as in
codecs), so a drawn object keeps the look its first frame gave it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def motion_shifts(max_shift: int) -> list[tuple[int, int]]:
    """(dy, dx) of each motion token: the still one first, then by length, so ties prefer the shorter."""
    grid = [(dy, dx) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)]
    return sorted(grid, key=lambda s: (s[0] ** 2 + s[1] ** 2, s))


def _all_shifts(frame: torch.Tensor, max_shift: int) -> torch.Tensor:
    """`frame` [3, H, W] moved by every shift: [S, 3, H, W], out[s][y, x] = frame[y - dy, x - dx], the
    border repeated outside the frame."""
    padded = F.pad(frame[None], (max_shift,) * 4, mode="replicate")[0]
    height, width = frame.shape[-2:]
    return torch.stack([padded[:, max_shift - dy : max_shift - dy + height, max_shift - dx : max_shift - dx + width]
                        for dy, dx in motion_shifts(max_shift)])


def _upsampled(grid: torch.Tensor, patch: int) -> torch.Tensor:
    return grid.repeat_interleave(patch, -2).repeat_interleave(patch, -1)


def choose_motions(previous: torch.Tensor, current: torch.Tensor, max_shift: int, tolerance: float,
                   patch: int) -> torch.Tensor:
    """Per patch of `current` [3, H, W], the motion that reproduces it from `previous`, or -1 if none does.

    A patch that did not change is still. A changed patch that several shifts reproduce (the trail an
    object leaves on plain background, an edge seen through one patch) takes the shift that reproduces
    the most changed patches around it, the object's own: ties decide the token, never the picture, and
    so an object's patches are one token. Equal support goes to the shorter shift.
    """
    errors = F.avg_pool2d((_all_shifts(previous, max_shift) - current).abs().mean(1, keepdim=True), patch)[:, 0]
    exact = errors <= tolerance  # [S, h, w]
    changed = ~exact[0]
    support = F.avg_pool2d((exact & changed).float()[:, None], 3, stride=1, padding=1, count_include_pad=False)[:, 0]
    order = torch.arange(len(exact), 0, -1, device=exact.device)[:, None, None] / (len(exact) + 1)
    score = torch.where(exact, support * 10 + order, -1.0)  # support counts in 1/9s: the order only breaks ties
    return torch.where(changed, torch.where(exact.any(0), score.argmax(0), -1), 0)


def with_motions(codes: torch.Tensor, frames: torch.Tensor, config, before: torch.Tensor | None = None) -> torch.Tensor:
    """One video's codes [T, h, w] (each frame coded alone) -> its tokens: the codes of the patches that
    a shift of the frame before reproduces replaced by their motion tokens (after `config.codebook_size`).
    `frames` [T, 3, H, W] in [-1, 1] are the video's; `before`, the frame [3, H, W] it continues, or None
    when the first frame starts a video. Key frames (`config.motion_key_interval`) keep their codes."""
    tokens = codes.clone()
    interval = config.motion_key_interval
    for t in range(len(frames)):
        previous = frames[t - 1] if t else before
        if previous is None or (t and interval and t % interval == 0):
            continue
        choice = choose_motions(previous, frames[t], config.motion_max_shift, config.motion_tolerance,
                                config.downsample_factor)
        tokens[t] = torch.where(choice >= 0, config.codebook_size + choice, tokens[t])
    return tokens


@torch.no_grad()
def decode_motion(vqgan, tokens: torch.Tensor, before: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens [T, h, w] -> frames [T, 3, H, W] in [-1, 1], each from the decoded frame before it (`before`,
    [3, H, W], for the first; a motion token with no frame before moves a black one).

    A patch given by a code is decoded among its neighbours' codes re-encoded from the moved frame, so
    the VQGAN's decoder sees a whole frame as in training.
    """
    config = vqgan.config
    patch = config.downsample_factor
    pixels = (3, tokens.shape[-2] * patch, tokens.shape[-1] * patch)
    previous = torch.full(pixels, -1.0, device=tokens.device) if before is None else before
    frames = []
    for frame_tokens in tokens:
        motion = frame_tokens >= vqgan.codebook_size
        index = _upsampled((frame_tokens - vqgan.codebook_size).clamp(min=0), patch)
        moved = _all_shifts(previous, config.motion_max_shift)
        frame = moved.gather(0, index[None, None].expand(1, *pixels))[0]
        if not bool(motion.all()):
            codes = torch.where(motion, vqgan.encode(frame[None])[0], frame_tokens)
            frame = torch.where(_upsampled(~motion, patch), vqgan.decode(codes[None])[0], frame)
        frames.append(frame)
        previous = frame
    return torch.stack(frames)
