"""LWMProcessor: chat messages with text, images and videos <-> one sequence of token ids.

One id space (docs/architecture.md#the-token-layout): text ids are `[0, V_text)`; a VQGAN code `c` is
`V_text + c`; `<eof>` (end of a
frame that is not the last) is `V_text + K` and `<eov>` (end of the last frame) `V_text + K + 1`, K the
codebook size. A frame is `codes_per_frame` codes and one delimiter. `<vision>`/`</vision>` are plain
text around a vision block.

The layout is LWM's (docs/architecture.md#the-token-layout), with a single BOS. A sequence is a list of
*chunks*, each encoded on its
own by the text tokenizer (so each gets SentencePiece's dummy "▁"), which is what LWM did:

    QA            <s>{system} USER: {question}\\n | <vision> | codes | </vision> |  ASSISTANT:
    text chat     <s>{system} USER: {question} ASSISTANT:
    generation    <s>{system} USER: Generate an image of {x} ASSISTANT: <vision>      (one chunk)
    CFG uncond.   <s><vision>

(`|` separates chunks.) The chat template generalises these rules to any conversation:

- the system text (default "You are a helpful assistant.") and `USER:` open the first user turn;
- inside a user turn, parts keep their order: the first text part follows `USER: `, a text part that
  follows text is joined with "\\n", and media after text is preceded by "\\n" (LWM's
  `{question}\\n<vision>`); each media block is its own chunks `<vision>`, codes, `</vision>`, and text
  after it starts a new chunk;
- ` ASSISTANT:` closes a user turn (appended to the current chunk, or its own chunk after media);
- an assistant reply is trained: text is a new chunk; a reply that starts with media puts ` <vision>`
  in the prompt chunk (LWM's generation prompt) and trains on codes, `</vision>` and EOS; every
  assistant turn ends with `</s>`;
- later turns follow directly: `...</s>USER: {question} ASSISTANT: {answer}</s>` (Vicuna v1.1's
  separators, which LWM's single-turn template comes from).

Labels are the input ids where a token is trained and -100 elsewhere (unshifted, as transformers'
causal LMs expect); loss weights are 1 where trained, else 0. Text that spells `<s>`, `</s>`,
`<vision>` or `<eof>` stays text: only this module inserts BOS/EOS and vision ids.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from itertools import groupby
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lwm import media
from lwm.model.targets import IGNORE_INDEX

SYSTEM_PROMPT = "You are a helpful assistant."
GENERATION_REQUESTS = {"image": "Generate an image of {}", "video": "Generate a video of {}"}
CAPTION_REQUESTS = {"image": "Describe the image.", "video": "Describe the video."}
CONTINUATION_REQUEST = "Continue the video."
VISION_START, VISION_END = "<vision>", "</vision>"
PROCESSOR_CONFIG_NAME = "processor_config.json"
VQGAN_FOLDER = "vqgan"

GenerationMode = Literal["text", "vision"]


class InvalidTextError(ValueError):
    """Text that is not Unicode (it holds a lone surrogate), so it has no tokens."""


class SequenceTooLongError(ValueError):
    """An example does not fit in the processor's `max_length` (both are attributes, for API errors)."""

    def __init__(self, message: str, length: int, max_length: int):
        super().__init__(message)
        self.length, self.max_length = length, max_length


@dataclass
class LWMProcessorConfig:
    system_prompt: str = SYSTEM_PROMPT
    max_frames: int | None = None  # frames sampled uniformly from a video (None: all)
    max_length: int | None = None  # longest allowed sequence (None: unlimited)
    # True: `<eov>` after every frame, as the official chat script (docs/official-weights.md#prompts-and-bos); False: training's
    eov_after_every_frame: bool = False
    single_turn: bool = False  # trained on one user turn per chat: chat front-ends ask each question alone


@dataclass
class _Chunk:
    ids: list[int]
    trained: bool


class LWMProcessor:
    """Builds LWM sequences from chat messages and decodes generated ids (see the module docstring)."""

    def __init__(self, text_tokenizer, vqgan, config: LWMProcessorConfig | None = None, **overrides):
        self.tokenizer = text_tokenizer
        self.vqgan = vqgan
        self.config = LWMProcessorConfig(**{**asdict(config or LWMProcessorConfig()), **overrides})
        self.text_vocab_size = len(text_tokenizer)
        self.codebook_size = int(vqgan.num_tokens)  # the VQGAN's codes and its motion tokens, if any
        self.codes_per_frame = int(vqgan.codes_per_frame)
        self.eof_token_id = self.text_vocab_size + self.codebook_size
        self.eov_token_id = self.eof_token_id + 1
        self.bos_token_id = text_tokenizer.bos_token_id
        self.eos_token_id = text_tokenizer.eos_token_id
        if self.config.max_frames is not None and self.config.max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {self.config.max_frames}")

    # ------------------------------------------------------------------ building sequences

    def apply_chat_template(
        self,
        messages: list[dict],
        add_generation_prompt: bool = False,
        generation_mode: GenerationMode = "text",
    ) -> dict[str, torch.Tensor]:
        """Messages -> `input_ids`, `labels`, `loss_weights`, `position_ids`, `segment_ids` (1-D tensors).

        With `add_generation_prompt`, the conversation must end with a user turn and the sequence ends
        with the assistant prompt (` ASSISTANT:`, plus ` <vision>` when `generation_mode="vision"`).
        """
        if generation_mode not in ("text", "vision"):
            raise ValueError(f"generation_mode must be 'text' or 'vision', got {generation_mode!r}")
        system, turns = _split_system(self._with_continuations(messages), self.config.system_prompt)
        _check_turn_order(turns, add_generation_prompt)
        writer = _ChunkWriter(self.encode_text)
        writer.token(self.bos_token_id, trained=False)
        prefix = f"{system} " if system else ""
        for index, turn in turns:
            parts = _content_parts(turn, index)
            if turn["role"] == "user":
                self._write_user_turn(writer, prefix, parts, index)
                prefix = ""
            else:
                self._write_assistant_turn(writer, parts, index)
        if add_generation_prompt and generation_mode == "vision":
            writer.text(" " + VISION_START, trained=False)
        return self._finish(writer.chunks())

    def text_example(self, text: str) -> dict[str, torch.Tensor]:
        """A plain text document, `<s>{text}</s>`, trained on everything after BOS (LWM's text format)."""
        return self._finish(
            [_Chunk([self.bos_token_id], False), _Chunk(self.encode_text(text), True), _Chunk([self.eos_token_id], True)]
        )

    def generation_prompt(self, description: str, kind: Literal["image", "video"] = "image") -> dict[str, torch.Tensor]:
        """LWM's conditional prompt for drawing: `<s>{system} USER: Generate an image of {x} ASSISTANT: <vision>`."""
        if kind not in GENERATION_REQUESTS:
            raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
        request = GENERATION_REQUESTS[kind].format(description)
        return self.apply_chat_template([{"role": "user", "content": request}], True, "vision")

    def unconditional_prompt(self) -> dict[str, torch.Tensor]:
        """The classifier-free-guidance branch: `<s><vision>`."""
        return self._finish(self._unconditional_writer().chunks())

    def unconditional_example(self, part: dict) -> dict[str, torch.Tensor]:
        """An image or video after the unconditional prompt `<s><vision>`, trained on the media and `</s>`.

        This is the branch classifier-free guidance subtracts: without such examples guidance amplifies
        whatever an untrained branch predicts.
        """
        writer = self._unconditional_writer()
        self._write_vision(writer, self.encode_media(part), trained=True, opened=True)
        writer.token(self.eos_token_id, trained=True)
        return self._finish(writer.chunks())

    def _unconditional_writer(self) -> "_ChunkWriter":
        writer = _ChunkWriter(self.encode_text)
        writer.token(self.bos_token_id, trained=False)
        writer.text(VISION_START, trained=False)
        return writer

    def pair_examples(self, part: dict, caption: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Both training directions from one (image or video, caption) pair: (media -> caption, caption -> media).

        The media is encoded once; both examples use its codes.
        """
        kind = part.get("type")
        if kind not in ("image", "video"):
            raise ValueError(f"pair_examples needs an image or video part, got type {kind!r}")
        encoded = {"type": kind, "codes": self.encode_media(part)}
        understanding = [
            {"role": "user", "content": [{"type": "text", "text": CAPTION_REQUESTS[kind]}, encoded]},
            {"role": "assistant", "content": caption},
        ]
        generation = [
            {"role": "user", "content": GENERATION_REQUESTS[kind].format(caption)},
            {"role": "assistant", "content": [encoded]},
        ]
        return self.apply_chat_template(understanding), self.apply_chat_template(generation)

    def _write_user_turn(self, writer: "_ChunkWriter", prefix: str, parts: list[dict], index: int) -> None:
        writer.text(prefix + "USER:", trained=False)
        self._write_parts(writer, parts, index, trained=False, first_separator=" ")
        writer.text(" ASSISTANT:", trained=False)

    def _write_assistant_turn(self, writer: "_ChunkWriter", parts: list[dict], index: int) -> None:
        if parts[0]["type"] == "text":
            self._write_parts(writer, parts, index, trained=True, first_separator="")
        else:  # LWM's generation prompt: the reply opens with " <vision>" in the prompt chunk
            writer.text(" " + VISION_START, trained=False)
            self._write_vision(writer, self._encoded(parts[0], index), trained=True, opened=True)
            self._write_parts(writer, parts[1:], index, trained=True, first_separator="", after_media=True)
        writer.token(self.eos_token_id, trained=True)

    def _write_parts(
        self, writer: "_ChunkWriter", parts: list[dict], index: int, trained: bool, first_separator: str,
        after_media: bool = False,
    ) -> None:
        """Text after text is joined by "\\n"; media after text is preceded by "\\n"; text after media
        starts a new chunk with no separator (its dummy "▁" is the space)."""
        previous = "media" if after_media else None
        for part in parts:
            if part["type"] == "text":
                separator = {None: first_separator, "text": "\n", "media": ""}[previous]
                writer.text(separator + part["text"], trained=trained)
                previous = "text"
            else:
                if previous == "text":
                    writer.text("\n", trained=trained)
                self._write_vision(writer, self._encoded(part, index), trained=trained)
                previous = "media"

    def _write_vision(self, writer: "_ChunkWriter", codes: np.ndarray, trained: bool, opened: bool = False) -> None:
        if not opened:
            writer.new_chunk()
            writer.text(VISION_START, trained=trained)
        writer.ids(self.vision_ids(codes), trained=trained)
        writer.text(VISION_END, trained=trained)
        writer.new_chunk()

    def vision_ids(self, codes: np.ndarray) -> list[int]:
        """Codes `[T, h, w]` -> ids: per frame `V_text + code` then `<eof>`, `<eov>` after the last frame."""
        frames = codes.reshape(len(codes), -1) + self.text_vocab_size
        last_delimiters = [self.eov_token_id] * len(frames)
        if not self.config.eov_after_every_frame:
            last_delimiters[:-1] = [self.eof_token_id] * (len(frames) - 1)
        ids: list[int] = []
        for frame, delimiter in zip(frames.tolist(), last_delimiters):
            ids += frame
            ids.append(delimiter)
        return ids

    def encode_text(self, text: str) -> list[int]:
        """Text -> ids, no BOS/EOS; spellings of special tokens stay text.

        Text that is not Unicode (a lone surrogate: JSON's "\\ud800", or bytes that were not UTF-8 read
        with surrogateescape) raises `InvalidTextError`; the tokenizer would raise a TypeError.
        """
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise InvalidTextError(
                f"the text is not valid Unicode: it holds a lone surrogate, {ascii(text[error.start])} "
                "(bytes that are not UTF-8 become these)"
            ) from None
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)

    def _finish(self, chunks: list[_Chunk]) -> dict[str, torch.Tensor]:
        input_ids = [i for chunk in chunks for i in chunk.ids]
        trained = [chunk.trained for chunk in chunks for _ in chunk.ids]
        limit = self.config.max_length
        if limit is not None and len(input_ids) > limit:
            has_frames = self.eof_token_id in input_ids or self.eov_token_id in input_ids
            advice = f" (each frame takes {self.codes_per_frame + 1}); use fewer frames or" if has_frames else "; use"
            raise SequenceTooLongError(
                f"the example has {len(input_ids)} tokens, more than max_length={limit}{advice} a shorter text",
                len(input_ids),
                limit,
            )
        ids = torch.tensor(input_ids, dtype=torch.long)
        mask = torch.tensor(trained, dtype=torch.bool)
        return {
            "input_ids": ids,
            "labels": torch.where(mask, ids, IGNORE_INDEX),
            "loss_weights": mask.float(),
            "position_ids": torch.arange(len(ids)),
            "segment_ids": torch.ones(len(ids), dtype=torch.long),
        }

    # ------------------------------------------------------------------ media -> codes

    def encode_media(self, part: dict, context: dict | None = None) -> np.ndarray:
        """An image or video content part -> int64 codes `[T, h, w]` (T = 1 for an image).

        The part gives `codes` (pre-computed, `[T, h, w]`, `[h, w]` or `[T, h*w]`), `frames` (uint8
        `[T, H, W, 3]` or `[H, W, 3]`), or the media itself under `image`/`video`/`path` (a path, bytes,
        a PIL image or a uint8 array). Videos keep `max_frames` frames spread uniformly. `context`: the
        video part this one continues (a VQGAN with motion codes codes its first frame from the last
        frame of that one; others code every frame alone).
        """
        kind = part.get("type")
        if "codes" in part:
            return self._checked_codes(part["codes"], kind)
        if part.get("continues") and context is None:
            raise ValueError('a video part marked "continues" has no video part before it')
        pixels = self._pixels_of(part)
        before = None if context is None or not self.vqgan.config.motion_max_shift else self._pixels_of(context)
        with torch.no_grad():
            codes = self.vqgan.encode_video(pixels, context=before)
        return codes.cpu().numpy().astype(np.int64)

    def _pixels_of(self, part: dict) -> torch.Tensor:
        """A media part -> its frames as the VQGAN reads them, `[T, 3, R, R]` in [-1, 1] on its device."""
        kind = part.get("type")
        parameter = next(self.vqgan.parameters(), None)
        if "codes" in part:
            codes = torch.from_numpy(self._checked_codes(part["codes"], kind))
            return self.vqgan.decode_video(codes.to(parameter.device if parameter is not None else "cpu"))
        if "frames" in part:
            frames = np.asarray(part["frames"])
        else:
            source = part.get(kind, part.get("path"))
            if source is None:
                raise ValueError(f"a {kind} part needs one of {kind!r}, 'path', 'frames' or 'codes'")
            if kind == "image":
                frames = media.load_image(source)
            else:
                frames = media.load_video(source, max_frames=self.config.max_frames)
        if kind == "image" and frames.ndim == 4 and len(frames) != 1:
            raise ValueError(f"an image part has {len(frames)} frames; use a video part")
        if kind == "video" and frames.ndim == 4 and self.config.max_frames:
            frames = frames[media.sample_indices(len(frames), self.config.max_frames)]
        pixels = media.preprocess(frames, self.vqgan.config.resolution)
        return pixels if parameter is None else pixels.to(parameter.device)

    def _with_continuations(self, messages: list[dict]) -> list[dict]:
        """Messages whose video parts marked `"continues": true` are coded from the video part before them
        (`encode_media(part, context)`), so a continuation's codes follow its context's."""

        def encoded(index: int, part: dict, context: dict | None) -> dict:
            if not part.get("continues") or "codes" in part:
                return part
            return {"type": "video", "codes": self._encoded(part, index, context)}

        return map_media_parts(messages, encoded)

    def _encoded(self, part: dict, message_index: int, context: dict | None = None) -> np.ndarray:
        try:
            return self.encode_media(part, context)
        except media.MediaError as error:
            raise type(error)(f"message {message_index}, {part['type']} part: {error.source}", error.problem) from None
        except ValueError as error:
            raise ValueError(f"message {message_index}, {part['type']} part: {error}") from None

    def _checked_codes(self, codes: Any, kind: str) -> np.ndarray:
        """Codes as `[T, h, w]`, `[T, h*w]` or (one frame) `[h, w]` -> validated int64 `[T, h, w]`."""
        array = codes.cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
        grid = self.vqgan.grid_size
        if array.dtype.kind not in "iu":
            raise ValueError(f"codes must be integers, got dtype {array.dtype}")
        if array.shape == (grid, grid):
            array = array[None]
        if array.ndim not in (2, 3) or array.shape[0] == 0 or math.prod(array.shape[1:]) != self.codes_per_frame:
            raise ValueError(
                f"codes of shape {array.shape} are not whole frames of {grid}x{grid} codes "
                f"(expected [T, {grid}, {grid}] or [T, {self.codes_per_frame}])"
            )
        if kind == "image" and len(array) != 1:
            raise ValueError(f"an image part has codes for {len(array)} frames; use a video part")
        if array.min() < 0 or array.max() >= self.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{array.min()}, {array.max()}]")
        return array.astype(np.int64).reshape(len(array), grid, grid)

    # ------------------------------------------------------------------ decoding

    def decode(self, ids: list[int] | torch.Tensor, decode_frames: bool = True) -> list[dict]:
        """Generated ids -> content parts: `{"type": "text", "text"}`, `{"type": "image"|"video", "codes", ...}`.

        Everything from the first `</s>` on is ignored. Vision blocks are split into frames at
        `<eof>`/`<eov>`, and `<eov>` closes a block; a last frame left incomplete (generation cut short)
        is dropped. The `<vision>`/`</vision>` markers around a block are removed from the text. With
        `decode_frames`, a vision part also holds its pixels: `image` uint8 `[H, W, 3]` or `video` uint8
        `[T, H, W, 3]`.
        """
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if self.eos_token_id in ids:
            ids = ids[: ids.index(self.eos_token_id)]
        runs = [(is_vision, list(run)) for is_vision, run in groupby(ids, key=lambda i: i >= self.text_vocab_size)]
        parts = []
        for position, (is_vision, run) in enumerate(runs):
            if is_vision:
                parts += [self._vision_part(frames, decode_frames) for frames in self._split_frames(run)]
                continue
            text = self.tokenizer.decode(run, skip_special_tokens=True)
            if position > 0:
                text = text.removeprefix(VISION_END).lstrip()
            if position + 1 < len(runs):
                text = text.rstrip().removesuffix(VISION_START).rstrip()
            if text.strip():
                parts.append({"type": "text", "text": text})
        return parts

    def _split_frames(self, run: list[int]) -> list[np.ndarray]:
        """Vision ids -> one `[T, codes_per_frame]` array per block (a block ends at `<eov>`)."""
        blocks, frames, frame = [], [], []
        for token in run:
            if token < self.eof_token_id:
                frame.append(token - self.text_vocab_size)
                continue
            if token > self.eov_token_id:
                raise ValueError(f"id {token} is a reserved vision id, neither a code nor <eof>/<eov>")
            if len(frame) != self.codes_per_frame:
                raise ValueError(f"a generated frame has {len(frame)} codes, expected {self.codes_per_frame}")
            frames.append(frame)
            frame = []
            if token == self.eov_token_id:
                blocks.append(np.array(frames))
                frames = []
        if frames:
            blocks.append(np.array(frames))
        return blocks

    def _vision_part(self, frames: np.ndarray, decode_frames: bool) -> dict:
        grid = self.vqgan.grid_size
        codes = frames.reshape(len(frames), grid, grid)
        kind = "image" if len(codes) == 1 else "video"
        part = {"type": kind, "codes": codes}
        if decode_frames:
            parameter = next(self.vqgan.parameters(), None)
            tensor = torch.from_numpy(codes)
            if parameter is not None:
                tensor = tensor.to(parameter.device)
            pixels = media.to_uint8(self.vqgan.decode_video(tensor))
            part[kind] = pixels[0] if kind == "image" else pixels
        return part

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the tokenizer files, `processor_config.json` and the VQGAN (in `vqgan/`)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        self.vqgan.save_pretrained(directory / VQGAN_FOLDER)
        (directory / PROCESSOR_CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "LWMProcessor":
        from lwm.tokenizers.modeling_vqgan import VQGAN
        from lwm.tokenizers.text import load_text_tokenizer

        directory = Path(directory)
        config_path = directory / PROCESSOR_CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"{directory}: no {PROCESSOR_CONFIG_NAME}; expected a folder written by save_pretrained")
        values = json.loads(config_path.read_text())
        unknown = sorted(set(values) - set(LWMProcessorConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{config_path}: unknown fields {unknown}")
        tokenizer = load_text_tokenizer(directory)
        return cls(tokenizer, VQGAN.from_pretrained(directory / VQGAN_FOLDER, device=device), LWMProcessorConfig(**values))


class _ChunkWriter:
    """Accumulates text into the current chunk; a chunk is tokenized on its own when it closes."""

    def __init__(self, encode_text):
        self._encode_text = encode_text
        self._chunks: list[_Chunk] = []
        self._text = ""
        self._trained = False

    def text(self, text: str, trained: bool) -> None:
        if self._text and trained != self._trained:
            self.new_chunk()
        self._text += text
        self._trained = trained

    def new_chunk(self) -> None:
        if self._text:
            self._chunks.append(_Chunk(self._encode_text(self._text), self._trained))
        self._text = ""

    def ids(self, ids: list[int], trained: bool) -> None:
        self.new_chunk()
        self._chunks.append(_Chunk(list(ids), trained))

    def token(self, token_id: int, trained: bool) -> None:
        self.ids([token_id], trained)

    def chunks(self) -> list[_Chunk]:
        self.new_chunk()
        return self._chunks


def map_media_parts(messages: list[dict], encode) -> list[dict]:
    """Messages with each image or video part replaced by `encode(message_index, part, context)`: `context`
    is the video part before it when it is marked `"continues": true` (a continuation's future follows
    its context), else None. Anything that is not a list of parts is left as it is."""
    previous, mapped = None, []
    for index, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            mapped.append(message)
            continue
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("image", "video"):
                context = previous if kind == "video" and part.get("continues") else None
                previous = part if kind == "video" else previous
                part = encode(index, part, context)
            parts.append(part)
        mapped.append({**message, "content": parts})
    return mapped


def _split_system(messages: list[dict], default: str) -> tuple[str, list[tuple[int, dict]]]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"message {index} must be a dict with 'role' and 'content'")
    if messages[0]["role"] != "system":
        return default, list(enumerate(messages))
    parts = _content_parts(messages[0], 0)
    if any(part["type"] != "text" for part in parts):
        raise ValueError("message 0: a system message may only hold text")
    return "\n".join(part["text"] for part in parts), list(enumerate(messages))[1:]


def _check_turn_order(turns: list[tuple[int, dict]], add_generation_prompt: bool) -> None:
    if not turns:
        raise ValueError("messages hold no user turn")
    for position, (index, message) in enumerate(turns):
        expected = "user" if position % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ValueError(
                f"message {index} has role {message['role']!r}; expected {expected!r} "
                "(an optional system message, then user and assistant turns alternating, starting with user)"
            )
    last = turns[-1][1]["role"]
    if add_generation_prompt and last != "user":
        raise ValueError("add_generation_prompt needs the conversation to end with a user message")
    if not add_generation_prompt and last != "assistant":
        raise ValueError("a training example must end with an assistant message (or pass add_generation_prompt=True)")


def _content_parts(message: dict, index: int) -> list[dict]:
    content = message["content"]
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list) or not parts:
        raise ValueError(f"message {index}: content must be a string or a non-empty list of parts")
    for position, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ValueError(f"message {index}, part {position}: a text part needs a string 'text'")
        elif kind in ("image", "video"):
            if not any(key in part for key in (kind, "path", "frames", "codes")):
                raise ValueError(
                    f"message {index}, part {position}: a {kind} part needs one of {kind!r}, 'path', 'frames', 'codes'"
                )
        else:
            raise ValueError(f"message {index}, part {position}: unknown part type {kind!r} (text, image or video)")
    return parts
