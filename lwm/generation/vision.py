"""Drawing with the model: text -> image, text -> video, and video continuation (world-model rollout).

Each procedure takes prompt ids (built by `LWMProcessor.generation_prompt` / `unconditional_prompt`,
or any ids ending where the vision block starts), runs the guided decode loop under the frame
structure constraint, and returns code grids `[frames, h, w]` (`[batch, frames, h, w]` for a batch
of prompts) ready for `VQGAN.decode`. A frame is `h * w` codes then a delimiter: `<eof>` between
frames, `<eov>` after the last.

LWM's settings (docs/architecture.md#drawing): images use guidance s = 5, top-k 8192, temperature 1; video frames
after the first use s = 1 (no guidance) and top-k 1000. LWM draws a video's first frame from the
*image* prompt, then appends it to the video prompt and to the unconditional prompt and draws the
rest; `generate_video` does that given `image_prompt_ids`, and otherwise draws every frame in one
pass over the video prompt (first frame with the image settings, on the same cache).
`text_to_image` / `text_to_video` take descriptions and build the prompts with an `LWMProcessor`.
A model folder may say how it draws best (`DrawingConfig`, its drawing_config.json); LWM's settings
are the default.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from lwm.generation.logits_process import FrameLayout, FrameStructureLogitsProcessor
from lwm.generation.sampling import SamplingConfig, as_batch, left_pad, sample

IMAGE_SAMPLING = SamplingConfig(temperature=1.0, top_k=8192, guidance_scale=5.0)
VIDEO_SAMPLING = SamplingConfig(temperature=1.0, top_k=1000, guidance_scale=1.0)
DRAWING_CONFIG_NAME = "drawing_config.json"
VideoProcedure = Literal["lwm", "single_pass"]
ContinuationProcedure = Literal["chat", "in_block"]


@dataclass(frozen=True)
class DrawingConfig:
    """How a model draws unless the caller says otherwise. The defaults are LWM's settings; a model
    trained otherwise keeps its own in its folder's drawing_config.json (the bundled model's come
    from a sweep on held-out seeds, docs/bundled-model.md).

    video_procedure: "lwm" draws a video's first frame from the image prompt with `video_first_frame`
    (LWM's two passes), "single_pass" draws every frame from the video prompt.
    continuation_procedure: "chat" asks for a continuation as it is trained, in a chat turn whose reply
    is a new vision block; "in_block" lets the given frames open the vision block of the request and
    draws the next frames in that block, as every video trained frame by frame is read (a model with
    motion codes continues best so: its frames are told from the frame before, docs/world-dynamics.md).
    """

    image: SamplingConfig = IMAGE_SAMPLING
    video_procedure: VideoProcedure = "lwm"
    video_first_frame: SamplingConfig = IMAGE_SAMPLING
    video: SamplingConfig = VIDEO_SAMPLING
    continuation: SamplingConfig = VIDEO_SAMPLING
    continuation_procedure: ContinuationProcedure = "chat"
    video_frames: int = 8  # frames of a drawn video when the caller names none

    def __post_init__(self):
        if self.video_procedure not in ("lwm", "single_pass"):
            raise ValueError(f"video_procedure must be 'lwm' or 'single_pass', got {self.video_procedure!r}")
        if self.continuation_procedure not in ("chat", "in_block"):
            raise ValueError(f"continuation_procedure must be 'chat' or 'in_block', got {self.continuation_procedure!r}")
        if self.video_frames < 1:
            raise ValueError(f"video_frames must be at least 1, got {self.video_frames}")

    def save(self, directory: str | os.PathLike) -> None:
        (Path(directory) / DRAWING_CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "DrawingConfig":
        """The folder's drawing_config.json, or LWM's settings when it has none."""
        path = Path(directory) / DRAWING_CONFIG_NAME
        return cls.from_json(path) if path.is_file() else cls()

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "DrawingConfig":
        path = Path(path)
        try:
            values = json.loads(path.read_text())
            return cls(**{key: SamplingConfig(**value) if isinstance(value, dict) else value
                          for key, value in values.items()})
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: not a drawing config ({error})") from None


def generate_image(
    model,
    prompt_ids: torch.Tensor,
    unconditional_ids: torch.Tensor | None,
    *,
    frame_shape: tuple[int, int],
    attention_mask: torch.Tensor | None = None,
    sampling: SamplingConfig = IMAGE_SAMPLING,
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """Text -> image codes `[1, h, w]` (batched: `[batch, 1, h, w]`)."""
    return generate_video(
        model,
        prompt_ids,
        unconditional_ids,
        num_frames=1,
        frame_shape=frame_shape,
        attention_mask=attention_mask,
        first_frame_sampling=sampling,
        generator=generator,
    )


def generate_video(
    model,
    prompt_ids: torch.Tensor,
    unconditional_ids: torch.Tensor | None,
    *,
    num_frames: int,
    frame_shape: tuple[int, int],
    attention_mask: torch.Tensor | None = None,
    image_prompt_ids: torch.Tensor | None = None,
    image_attention_mask: torch.Tensor | None = None,
    first_frame_sampling: SamplingConfig = IMAGE_SAMPLING,
    sampling: SamplingConfig = VIDEO_SAMPLING,
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """Text -> video codes `[num_frames, h, w]` (batched: `[batch, num_frames, h, w]`).

    prompt_ids: the video prompt. image_prompt_ids: given, LWM's two-pass procedure (the first
        frame is drawn from this prompt, then appended to the video and unconditional prompts);
        None, a single pass over the video prompt.
    first_frame_sampling / sampling: settings of the first frame / of the frames after it.
    """
    layout = FrameLayout.from_config(model.config, _codes_per_frame(frame_shape))
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    batched = prompt_ids.dim() == 2
    prompt_ids, attention_mask = as_batch(prompt_ids, attention_mask)
    unconditional = _unconditional(unconditional_ids, prompt_ids)
    rest = (num_frames - 1) * layout.frame_length

    if image_prompt_ids is None:
        schedule = [(layout.frame_length, first_frame_sampling), (rest, sampling)]
        ids = _draw_frames(model, layout, num_frames, (prompt_ids, attention_mask), unconditional, schedule, generator)
    else:
        image_prompt = as_batch(image_prompt_ids, image_attention_mask, batch_size=len(prompt_ids))
        first = _draw_frames(
            model, layout, num_frames, image_prompt, unconditional, [(layout.frame_length, first_frame_sampling)], generator
        )
        continued = _draw_frames(
            model,
            layout,
            num_frames,
            (prompt_ids, attention_mask),
            unconditional,
            [(rest, sampling)],
            generator,
            context=first,
        )
        ids = torch.cat([first, continued], dim=1)
    codes = layout.frame_codes(ids, frame_shape)
    return codes if batched else codes[0]


def continue_video(
    model,
    prompt_ids: torch.Tensor,
    codes: torch.Tensor,
    unconditional_ids: torch.Tensor | None = None,
    *,
    num_frames: int,
    attention_mask: torch.Tensor | None = None,
    sampling: SamplingConfig = VIDEO_SAMPLING,
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """The next `num_frames` frames after `codes` `[frames, h, w]` (batched: `[batch, frames, h, w]`).

    The model reads the prompt (ending where the vision block starts, e.g. LWM's video prompt)
    followed by the given frames, each closed by `<eof>`, and writes the new frames, the last one
    closed by `<eov>`. With guidance, the frames follow the unconditional prompt too (as in LWM's
    video procedure). Returns the new frames only.
    """
    if codes.dim() not in (3, 4):
        raise ValueError(f"codes must be [frames, h, w] or [batch, frames, h, w], got {tuple(codes.shape)}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    frame_shape = tuple(codes.shape[-2:])
    layout = FrameLayout.from_config(model.config, _codes_per_frame(frame_shape))
    batched = codes.dim() == 4 or prompt_ids.dim() == 2
    batch = codes.shape[0] if codes.dim() == 4 else as_batch(prompt_ids, attention_mask)[0].shape[0]
    prompt = as_batch(prompt_ids, attention_mask, batch_size=batch)
    unconditional = _unconditional(unconditional_ids, prompt[0])
    context = layout.frame_ids(codes.to(prompt[0].device)).expand(batch, -1)
    ids = _draw_frames(
        model,
        layout,
        num_frames,
        prompt,
        unconditional,
        [(num_frames * layout.frame_length, sampling)],
        generator,
        context=context,
        block_start_in_context=False,
    )
    new_codes = layout.frame_codes(ids, frame_shape)
    return new_codes if batched else new_codes[0]


def text_to_image(
    model,
    processor,
    description: str | Sequence[str],
    *,
    sampling: SamplingConfig = IMAGE_SAMPLING,
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """`generate_image` from a description (or a list of them) through an `LWMProcessor`'s prompts."""
    prompt_ids, attention_mask, unconditional_ids = _prompts(model, processor, description, "image")
    return generate_image(
        model,
        prompt_ids,
        unconditional_ids,
        frame_shape=(processor.vqgan.grid_size, processor.vqgan.grid_size),
        attention_mask=attention_mask,
        sampling=sampling,
        generator=generator,
    )


def text_to_video(
    model,
    processor,
    description: str | Sequence[str],
    *,
    num_frames: int,
    procedure: Literal["lwm", "single_pass"] = "lwm",
    first_frame_sampling: SamplingConfig = IMAGE_SAMPLING,
    sampling: SamplingConfig = VIDEO_SAMPLING,
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """`generate_video` from a description (or a list of them) through an `LWMProcessor`'s prompts.

    procedure: "lwm" draws the first frame from the image prompt (LWM's two passes), "single_pass"
    draws every frame from the video prompt.
    """
    if procedure not in ("lwm", "single_pass"):
        raise ValueError(f"procedure must be 'lwm' or 'single_pass', got {procedure!r}")
    prompt_ids, attention_mask, unconditional_ids = _prompts(model, processor, description, "video")
    image_prompt_ids = image_attention_mask = None
    if procedure == "lwm":
        image_prompt_ids, image_attention_mask, _ = _prompts(model, processor, description, "image")
    return generate_video(
        model,
        prompt_ids,
        unconditional_ids,
        num_frames=num_frames,
        frame_shape=(processor.vqgan.grid_size, processor.vqgan.grid_size),
        attention_mask=attention_mask,
        image_prompt_ids=image_prompt_ids,
        image_attention_mask=image_attention_mask,
        first_frame_sampling=first_frame_sampling,
        sampling=sampling,
        generator=generator,
    )


def _prompts(model, processor, description: str | Sequence[str], kind: str):
    """(conditional ids, their mask, unconditional ids) on the model's device; 1-D for one description."""
    if (processor.text_vocab_size, processor.codebook_size) != (model.config.vocab_size, model.config.num_vision_codes):
        raise ValueError(
            f"the processor's vocabulary ({processor.text_vocab_size} text ids, {processor.codebook_size} codes) "
            f"does not match the model's ({model.config.vocab_size}, {model.config.num_vision_codes})"
        )
    device = model.device
    unconditional_ids = processor.unconditional_prompt()["input_ids"].to(device)
    if isinstance(description, str):
        return processor.generation_prompt(description, kind)["input_ids"].to(device), None, unconditional_ids
    prompts = [processor.generation_prompt(text, kind)["input_ids"] for text in description]
    prompt_ids, attention_mask = left_pad(prompts, model.config.pad_token_id or 0)
    return prompt_ids.to(device), attention_mask.to(device), unconditional_ids


def _draw_frames(
    model,
    layout: FrameLayout,
    num_frames: int,
    prompt: tuple[torch.Tensor, torch.Tensor],
    unconditional: tuple[torch.Tensor, torch.Tensor] | None,
    schedule: list[tuple[int, SamplingConfig]],
    generator: torch.Generator | None,
    context: torch.Tensor | None = None,
    block_start_in_context: bool = True,
) -> torch.LongTensor:
    """Samples the scheduled ids after prompt (+ `context` vision ids, appended to both branches).

    The vision block of `num_frames` frames starts where the context starts, or right after it when
    `block_start_in_context` is False (a continuation counts only its new frames).
    """
    prompt_ids, prompt_mask = prompt
    vision_start = prompt_ids.shape[1]
    if context is not None:
        prompt_ids, prompt_mask = _append(prompt, context)
        unconditional = None if unconditional is None else _append(unconditional, context)
        if not block_start_in_context:
            vision_start = prompt_ids.shape[1]
    new_tokens = sum(count for count, _ in schedule)
    _check_fits(model, prompt_ids.shape[1], new_tokens)
    structure = FrameStructureLogitsProcessor(layout, num_frames, vision_start)
    return sample(
        model,
        prompt_ids,
        prompt_mask,
        schedule=schedule,
        processors=[structure],
        unconditional_ids=None if unconditional is None else unconditional[0],
        unconditional_mask=None if unconditional is None else unconditional[1],
        generator=generator,
    )


def _unconditional(unconditional_ids: torch.Tensor | None, prompt_ids: torch.Tensor):
    """The unconditional prompt as one row per conditional row, on their device (None: unguided)."""
    if unconditional_ids is None:
        return None
    return as_batch(unconditional_ids.to(prompt_ids.device), batch_size=prompt_ids.shape[0])


def _append(prompt: tuple[torch.Tensor, torch.Tensor], ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    prompt_ids, prompt_mask = prompt
    return torch.cat([prompt_ids, ids], dim=1), torch.cat([prompt_mask, torch.ones_like(ids)], dim=1)


def _check_fits(model, prompt_length: int, new_tokens: int) -> None:
    context = model.config.max_position_embeddings
    if prompt_length + new_tokens > context:
        raise ValueError(
            f"the prompt ({prompt_length} tokens) and the frames to generate ({new_tokens} tokens) exceed "
            f"the model's context of {context} tokens; ask for fewer frames or shorten the prompt"
        )


def _codes_per_frame(frame_shape: tuple[int, int]) -> int:
    if len(frame_shape) != 2 or min(frame_shape) < 1:
        raise ValueError(f"frame_shape must be (height, width) in codes, got {frame_shape}")
    return int(frame_shape[0]) * int(frame_shape[1])

