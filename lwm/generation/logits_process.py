"""Logits processors that keep generation inside LWM's token layout.

One id space (docs/architecture.md#the-token-layout): text ids are [0, V), vision code c is V + c, `<eof>` is V + K and
`<eov>` V + K + 1; ids from V + K + 2 up to V + vision_vocab_size are reserved and never valid.
Every constraint here allows one contiguous id interval per row, so each is a single comparison
against `arange(width)`, and rows of one batch may sit at different stages.

These are `transformers.LogitsProcessor`s: they work in `model.generate(logits_processor=...)` as
well as in the guided decode loop of `lwm.generation.sampling`. There each also says, through
`next_head`, which of the model's two heads can hold every row's next id, so the loop computes only
that head's logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from transformers import LogitsProcessor

from lwm.model.configuration_lwm import LWMConfig


@dataclass(frozen=True)
class FrameLayout:
    """Where vision ids live and how a frame is laid out: `codes_per_frame` codes, then a delimiter."""

    text_vocab_size: int
    num_codes: int
    codes_per_frame: int

    def __post_init__(self):
        for name in ("text_vocab_size", "num_codes", "codes_per_frame"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_config(cls, config: LWMConfig, codes_per_frame: int) -> "FrameLayout":
        return cls(config.vocab_size, config.num_vision_codes, codes_per_frame)

    @property
    def first_code_id(self) -> int:
        return self.text_vocab_size

    @property
    def eof_token_id(self) -> int:
        return self.text_vocab_size + self.num_codes

    @property
    def eov_token_id(self) -> int:
        return self.text_vocab_size + self.num_codes + 1

    @property
    def frame_length(self) -> int:
        return self.codes_per_frame + 1

    def frame_ids(self, codes: torch.Tensor, last_delimiter: int | None = None) -> torch.LongTensor:
        """Codes `[..., frames, h, w]` -> ids `[..., frames * frame_length]`: each frame's codes then `<eof>`.

        `last_delimiter` replaces the delimiter of the last frame (e.g. `eov_token_id` to close a video).
        """
        frames = codes.flatten(-2)
        if frames.shape[-1] != self.codes_per_frame:
            raise ValueError(f"frames have {frames.shape[-1]} codes, the layout expects {self.codes_per_frame}")
        if frames.numel() and (frames.min() < 0 or frames.max() >= self.num_codes):
            raise ValueError(f"codes must lie in [0, {self.num_codes}), got [{frames.min()}, {frames.max()}]")
        delimiters = torch.full((*frames.shape[:-1], 1), self.eof_token_id, dtype=torch.long, device=codes.device)
        if last_delimiter is not None:
            delimiters[..., -1, :] = last_delimiter
        return torch.cat([frames.long() + self.first_code_id, delimiters], dim=-1).flatten(-2)

    def frame_codes(self, ids: torch.Tensor, frame_shape: tuple[int, int]) -> torch.LongTensor:
        """Ids `[..., frames * frame_length]` (each frame's codes then a delimiter) -> codes `[..., frames, h, w]`."""
        height, width = frame_shape
        if height * width != self.codes_per_frame:
            raise ValueError(f"frame shape {frame_shape} does not hold {self.codes_per_frame} codes")
        if ids.shape[-1] % self.frame_length:
            raise ValueError(f"{ids.shape[-1]} ids are not a whole number of {self.frame_length}-id frames")
        frames = ids.unflatten(-1, (-1, self.frame_length))
        if not bool((frames[..., -1] >= self.eof_token_id).all() & (frames[..., -1] <= self.eov_token_id).all()):
            raise ValueError("a frame does not end in <eof> or <eov>")
        codes = frames[..., :-1] - self.first_code_id
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.num_codes):
            raise ValueError("a frame holds an id that is not a vision code")
        return codes.unflatten(-1, (height, width))


def keep_interval(scores: torch.Tensor, low: torch.Tensor | int, high: torch.Tensor | int) -> torch.Tensor:
    """Scores with every id outside [low, high) set to -inf; `low`/`high` are per row ([batch]) or scalars."""
    if not (isinstance(low, int) and isinstance(high, int)):
        low = torch.as_tensor(low, device=scores.device).reshape(-1, 1)
        high = torch.as_tensor(high, device=scores.device).reshape(-1, 1)
        if bool((low == low[0]).all() and (high == high[0]).all()):
            low, high = int(low[0]), int(high[0])
    if isinstance(low, int):  # one interval for all rows: a copy, no mask
        kept = torch.full_like(scores, float("-inf"))
        kept[:, low:high] = scores[:, low:high]
        return kept
    ids = torch.arange(scores.shape[-1], device=scores.device)
    return scores.masked_fill((ids < low) | (ids >= high), float("-inf"))


class TextOnlyLogitsProcessor(LogitsProcessor):
    """Only text ids may be generated (answers, captions): every vision id is masked."""

    def __init__(self, text_vocab_size: int):
        self.text_vocab_size = text_vocab_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return keep_interval(scores, 0, self.text_vocab_size)

    def next_head(self, input_ids: torch.LongTensor) -> Literal["text"]:
        return "text"


class VisionOnlyLogitsProcessor(LogitsProcessor):
    """Only vision codes, `<eof>` and `<eov>` may be generated; text and reserved vision ids are masked."""

    def __init__(self, layout: FrameLayout):
        self.layout = layout

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return keep_interval(scores, self.layout.first_code_id, self.layout.eov_token_id + 1)

    def next_head(self, input_ids: torch.LongTensor) -> Literal["vision"]:
        return "vision"


class FrameStructureLogitsProcessor(LogitsProcessor):
    """Forces each row's vision block to be `num_frames` frames of exactly `codes_per_frame` codes.

    A row's block starts at column `vision_start` of `input_ids` (one column for all rows, or one
    per row; the prompt length when the block starts with the first generated token). The row's
    stage follows from how many ids it has from there on, so the processor holds no state:

    - a code position allows only codes [V, V + K);
    - a delimiter position allows only `<eof>`, or `<eov>` after the last frame;
    - after the block only text (EOS included) is allowed; before it the row is left untouched.

    Every stage is one id interval, so a batch with rows at different stages costs one mask.
    """

    def __init__(
        self,
        layout: FrameLayout,
        num_frames: int | torch.Tensor,
        vision_start: int | torch.Tensor,
    ):
        num_frames = torch.as_tensor(num_frames)
        if bool((num_frames < 1).any()):
            raise ValueError(f"num_frames must be at least 1, got {num_frames.tolist()}")
        self.layout = layout
        # (vision_start, num_frames) of each row, or one pair for all, read once: this runs every step.
        starts, frames = torch.broadcast_tensors(torch.as_tensor(vision_start).reshape(-1), num_frames.reshape(-1))
        self.rows = list(zip(starts.tolist(), frames.tolist()))
        self.blocks = sorted(set(self.rows))

    def next_head(self, input_ids: torch.LongTensor) -> Literal["text", "vision"] | None:
        """"vision" while every row is inside its block (codes and delimiters are vision ids), "text" once
        every row is past it, None otherwise (a row before its block may take any id)."""
        heads = set()
        for start, frames in self.blocks:
            done = input_ids.shape[1] - start
            heads.add(None if done < 0 else "text" if done >= frames * self.layout.frame_length else "vision")
        return heads.pop() if len(heads) == 1 else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = self.blocks if len(self.blocks) == 1 else self.rows  # one interval for all rows, or one per row
        intervals = [self._interval(input_ids.shape[1] - start, frames, scores.shape[-1]) for start, frames in rows]
        if len(intervals) == 1:
            return keep_interval(scores, *intervals[0])
        low, high = zip(*intervals)
        return keep_interval(scores, list(low), list(high))

    def _interval(self, done: int, frames: int, vocabulary: int) -> tuple[int, int]:
        """[low, high): the ids allowed after `done` ids of a block of `frames` frames (the rule above)."""
        layout = self.layout
        frame, position = divmod(done, layout.frame_length)
        if done < 0:
            return 0, vocabulary
        if frame >= frames:
            return 0, layout.text_vocab_size
        if position < layout.codes_per_frame:
            return layout.first_code_id, layout.first_code_id + layout.num_codes
        delimiter = layout.eov_token_id if frame == frames - 1 else layout.eof_token_id
        return delimiter, delimiter + 1
