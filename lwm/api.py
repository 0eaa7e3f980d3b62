"""The high-level Python API: `LWM` sees and draws, `Video` holds frames.

    from lwm import LWM
    lwm = LWM.from_pretrained("path/to/model")          # or "bundled"
    lwm.caption("clip.mp4")
    lwm.answer("photo.jpg", "What colour is the ball?")
    for piece in lwm.chat(messages, stream=True): print(piece, end="")
    lwm.generate_image("a red cube", seed=0).save("cube.png")
    lwm.generate_video("a ball rolling left", num_frames=8).save("ball.mp4")
    lwm.continue_video("clip.mp4", num_frames=4).save("next.mp4")

A model folder holds the decoder (`config.json`, `model.safetensors`) and its processor (text
tokenizer, `processor_config.json`, `vqgan/`), as `LWM.save_pretrained` writes it. Media may be a
path, bytes, a uint8 array (`[H, W, 3]` image, `[T, H, W, 3]` video), a PIL image or a `Video`.
Text is greedy by default (temperature 0); drawing uses the model's settings (its drawing_config.json),
else LWM's guided sampling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, Union

import numpy as np
import torch
from PIL import Image

from lwm import media
from lwm.generation import FrameLayout, SamplingConfig, TextOnlyLogitsProcessor, iter_tokens, vision
from lwm.tokenizers import CAPTION_REQUESTS, CONTINUATION_REQUEST, LWMProcessor

BUNDLED = "bundled"
# Package data, found through the installed package: a wheel ships the bundled model.
BUNDLED_DIR = Path(str(resources.files("lwm") / BUNDLED))
DEFAULT_FPS = 8.0
DEFAULT_MAX_FRAMES = 8  # frames read from an input video when the model folder does not say (LWM's chat: 8)
DEFAULT_MAX_NEW_TOKENS = 512
MAX_UTF8_BYTES = 4

MediaKind = Literal["image", "video"]


class ContextLengthError(ValueError):
    """A request that does not fit in the model's context; the message follows OpenAI's wording."""

    def __init__(self, context: int, prompt_tokens: int, new_tokens: int):
        self.context, self.prompt_tokens, self.new_tokens = context, prompt_tokens, new_tokens
        super().__init__(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + new_tokens} tokens ({prompt_tokens} in the messages, {new_tokens} in the "
            "completion). Please reduce the length of the messages, the media or the completion."
        )


@dataclass
class Video:
    """Frames `uint8[T, H, W, 3]` and the rate they play at."""

    frames: np.ndarray
    fps: float = DEFAULT_FPS

    def __post_init__(self):
        frames = np.asarray(self.frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise ValueError(f"a Video holds uint8 frames [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def save(self, path: str | os.PathLike) -> None:
        """Write the video (.mp4/.mov/.mkv: H.264, .gif: animated GIF)."""
        media.save_video(self.frames, path, self.fps)

    def to_pil(self) -> list[Image.Image]:
        return [Image.fromarray(frame) for frame in self.frames]


MediaInput = Union[str, os.PathLike, bytes, np.ndarray, Image.Image, Video]


class TextStream:
    """The pieces of a reply as they are decoded: an iterator (`close()` stops the generation).

    After iteration, `text` is the whole reply (exactly the pieces joined), `finish_reason` is
    "stop" (end of turn) or "length" (the token budget ran out), and `prompt_tokens` /
    `completion_tokens` count the tokens.

    Pieces are decoded incrementally: each new piece is the text of the tokens since the last
    piece, decoded after the tokens of the piece before (their context: leading spaces, byte
    tokens). A piece that ends inside a multi-byte character waits for the next token, up to
    the 4 bytes a character can have (so invalid bytes cannot hold the stream back).
    """

    def __init__(self, tokens: Iterator[torch.Tensor], tokenizer, eos_token_id: int, prompt_tokens: int):
        self.prompt_tokens = prompt_tokens
        self.ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self._tokens = tokens
        self._tokenizer = tokenizer
        self._eos_token_id = eos_token_id
        self._pieces = self._decode()

    @property
    def completion_tokens(self) -> int:
        return len(self.ids) + (self.finish_reason == "stop")

    def __iter__(self) -> "TextStream":
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()

    def read(self) -> str:
        """Runs the generation to its end and returns the whole reply."""
        for _ in self:
            pass
        return self.text

    def _decode(self) -> Iterator[str]:
        context_start = piece_start = 0  # ids[context_start:piece_start] were the previous piece
        try:
            for token in self._tokens:
                token_id = int(token[0])
                if token_id == self._eos_token_id:
                    self.finish_reason = "stop"
                    break
                self.ids.append(token_id)
                piece = self._piece(context_start, piece_start)
                # Wait while a character may still be completed (UTF-8 has at most 4 bytes).
                incomplete = piece.endswith("\ufffd") and len(self.ids) - piece_start < MAX_UTF8_BYTES
                if piece and not incomplete:
                    context_start, piece_start = piece_start, len(self.ids)
                    self.text += piece
                    yield piece
            else:
                self.finish_reason = "length"
            piece = self._piece(context_start, piece_start)
            if piece:
                self.text += piece
                yield piece
        finally:
            self._tokens.close()

    def _piece(self, context_start: int, piece_start: int) -> str:
        decode = self._tokenizer.decode
        context = decode(self.ids[context_start:piece_start], skip_special_tokens=True)
        return decode(self.ids[context_start:], skip_special_tokens=True)[len(context) :]


class LWM:
    """A Large World Model with its processor: captions, answers, chats, and draws images and videos."""

    def __init__(self, model, processor: LWMProcessor, max_frames: int | None = None,
                 drawing: vision.DrawingConfig | None = None):
        config = model.config
        if processor.text_vocab_size != config.vocab_size or processor.codebook_size != config.num_vision_codes:
            raise ValueError(
                f"the processor (text vocabulary {processor.text_vocab_size}, {processor.codebook_size} codes) "
                f"does not match the model (text vocabulary {config.vocab_size}, {config.num_vision_codes} codes)"
            )
        if config.vision_grid_size and config.vision_grid_size**2 != processor.codes_per_frame:
            raise ValueError(
                f"the model's code grid is {config.vision_grid_size} x {config.vision_grid_size}, but the processor's "
                f"frames have {processor.codes_per_frame} codes"
            )
        if max_frames is not None or processor.config.max_frames is None:
            # The one place the number of frames is decided: the processor samples them from every video.
            frames = DEFAULT_MAX_FRAMES if max_frames is None else max_frames
            processor = LWMProcessor(processor.tokenizer, processor.vqgan, processor.config, max_frames=frames)
        self.model = model.eval()
        self.processor = processor
        self.drawing = drawing or vision.DrawingConfig()

    @property
    def max_frames(self) -> int:
        """Frames read from an input video, spread uniformly over it (the processor's setting)."""
        return self.processor.config.max_frames

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike = BUNDLED,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        max_frames: int | None = None,
        device_map: str | dict | None = None,
        max_memory: dict | None = None,
        offload_folder: str | os.PathLike | None = None,
        torch_dtype: str | torch.dtype | None = None,
    ) -> "LWM":
        """Loads a model folder written by `save_pretrained` (or `lwm convert`); "bundled" is the shipped one.

        dtype (or its transformers alias torch_dtype): of the decoder ("float32", "bfloat16",
            "float16" or a torch dtype); the VQGAN stays float32.
        max_frames: frames read from an input video (spread uniformly over it); default: the
            folder's processor_config.json, else 8.
        device_map, max_memory, offload_folder: accelerate's big-model placement, for decoders
            larger than one device: e.g. device_map="auto" spreads layers over GPU, CPU and disk.
            `device` then only places the VQGAN and the inputs.
        """
        from lwm.model import LWMForCausalLM

        folder = model_folder(path)
        placement = {}
        if device_map is not None:
            placement = {"device_map": device_map, "max_memory": max_memory, "offload_folder": offload_folder}
        model = LWMForCausalLM.from_pretrained(folder, dtype=_torch_dtype(dtype or torch_dtype), **placement)
        processor = LWMProcessor.from_pretrained(folder, device=device)
        return cls(model if device_map is not None else model.to(device), processor, max_frames=max_frames,
                   drawing=vision.DrawingConfig.load(folder))

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        self.model.save_pretrained(directory)
        self.processor.save_pretrained(directory)
        self.drawing.save(directory)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the decoder's first module (accelerate's hooks take over from there)."""
        placement = getattr(self.model, "hf_device_map", None)
        if not placement:
            return next(self.model.parameters()).device
        first = next(iter(placement.values()))
        if isinstance(first, int):
            return torch.device("cuda", first)
        return torch.device("cpu" if first == "disk" else first)

    @property
    def context_length(self) -> int:
        return int(self.model.config.max_position_embeddings)

    @property
    def resolution(self) -> int:
        return int(self.processor.vqgan.config.resolution)

    # ------------------------------------------------------------------ understanding

    def caption(self, source: MediaInput, **settings) -> str:
        """Describes an image or a video (greedy unless settings say otherwise)."""
        kind = media_kind(source)
        return self.answer(source, CAPTION_REQUESTS[kind], **settings)

    def answer(self, source: MediaInput, question: str, **settings) -> str:
        """Answers a question about an image or a video."""
        kind = media_kind(source)
        content = [{"type": "text", "text": question}, {"type": kind, kind: source}]
        return self.chat([{"role": "user", "content": content}], **settings)

    def chat(
        self,
        messages: list[dict],
        stream: bool = False,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        seed: int | None = None,
    ) -> str | TextStream:
        """The assistant's reply to a conversation: a string, or with `stream=True` a `TextStream` of pieces.

        messages: `{"role": "system"|"user"|"assistant", "content": str | parts}`; parts are
            `{"type": "text", "text"}`, `{"type": "image", "image"|"path"|"url": media}` or
            `{"type": "video", "video"|"path"|"url": media}` (media as in the module docstring;
            URLs are local paths: this class never downloads).
        temperature: 0 is greedy. max_new_tokens: None generates until the end of the turn, at most
            512 tokens or what the context has room for; a number that does not fit is an error.
        Errors in the input (bad media, too long for the context) are raised here, before streaming.
        """
        prompt = self.chat_prompt(messages)
        room = self.context_length - len(prompt)
        if max_new_tokens is None:
            if room < 1:
                raise ContextLengthError(self.context_length, len(prompt), 1)
            max_new_tokens = min(DEFAULT_MAX_NEW_TOKENS, room)
        elif max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        elif max_new_tokens > room:
            raise ContextLengthError(self.context_length, len(prompt), max_new_tokens)
        sampling = text_sampling(temperature, top_k, top_p)
        tokens = iter_tokens(
            self.model,
            prompt.to(self.device),
            schedule=[(max_new_tokens, sampling)],
            processors=[TextOnlyLogitsProcessor(self.processor.text_vocab_size)],
            generator=self._generator(seed),
        )
        reply = TextStream(tokens, self.processor.tokenizer, self.processor.eos_token_id, len(prompt))
        return reply if stream else reply.read()

    def chat_prompt(self, messages: list[dict]) -> torch.LongTensor:
        """The prompt ids of a conversation, media encoded, ending with the assistant prompt."""
        if not isinstance(messages, list):
            raise ValueError("messages must be a list of {'role', 'content'} dicts")
        resolved = [self._resolve_media(message) for message in messages]
        ids = self.processor.apply_chat_template(resolved, add_generation_prompt=True)["input_ids"]
        if len(ids) > self.context_length:
            raise ContextLengthError(self.context_length, len(ids), 0)
        return ids

    # ------------------------------------------------------------------ drawing

    def generate_image(
        self,
        prompt: str,
        *,
        guidance_scale: float | None = None,
        top_k: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        progress: bool = False,
    ) -> Image.Image:
        """Text -> image. Settings left at None are the model's (`self.drawing.image`; LWM's: guidance
        s = 5, top-k 8192, temperature 1); temperature 0 is greedy, top_k 0 turns top-k off."""
        sampling = with_settings(self.drawing.image, temperature, top_k, guidance_scale)
        prompt_ids = self._generation_prompt(prompt, "image", num_frames=1)
        with self._progress(self._frame_tokens(1), "drawing", progress):
            codes = vision.generate_image(
                self.model,
                prompt_ids.to(self.device),
                self.processor.unconditional_prompt()["input_ids"].to(self.device),
                frame_shape=self._frame_shape,
                sampling=sampling,
                generator=self._generator(seed),
            )
        return Image.fromarray(self._decode_codes(codes)[0])

    def generate_video(
        self,
        prompt: str,
        *,
        num_frames: int | None = None,
        guidance_scale: float | None = None,
        video_guidance_scale: float | None = None,
        top_k: int | None = None,
        temperature: float | None = None,
        fps: float = DEFAULT_FPS,
        seed: int | None = None,
        progress: bool = False,
    ) -> Video:
        """Text -> video, as the model draws best (`self.drawing`). LWM's procedure draws the first frame
        as an image (guidance `guidance_scale`, top-k 8192) and the rest from the video prompt
        (`video_guidance_scale`, `top_k`); a model may draw every frame from the video prompt instead.
        Settings left at None are the model's; temperature 0 is greedy.
        """
        num_frames = self.drawing.video_frames if num_frames is None else num_frames
        first = with_settings(self.drawing.video_first_frame, temperature, None, guidance_scale)
        rest = with_settings(self.drawing.video, temperature, top_k, video_guidance_scale)
        video_prompt = self._generation_prompt(prompt, "video", num_frames)
        image_prompt = None
        if self.drawing.video_procedure == "lwm":
            image_prompt = self._generation_prompt(prompt, "image", 1).to(self.device)
        with self._progress(self._frame_tokens(num_frames), "animating", progress):
            codes = vision.generate_video(
                self.model,
                video_prompt.to(self.device),
                self.processor.unconditional_prompt()["input_ids"].to(self.device),
                num_frames=num_frames,
                frame_shape=self._frame_shape,
                image_prompt_ids=image_prompt,
                first_frame_sampling=first,
                sampling=rest,
                generator=self._generator(seed),
            )
        return Video(self._decode_codes(codes), fps)

    def continue_video(
        self,
        source: MediaInput,
        *,
        num_frames: int = 4,
        prompt: str | None = None,
        top_k: int | None = None,
        temperature: float | None = None,
        fps: float | None = None,
        seed: int | None = None,
        progress: bool = False,
    ) -> Video:
        """The next `num_frames` frames after a video (or an image): the world-model rollout.

        The model reads the given frames (at most `max_frames`, spread uniformly over the clip as in
        training). Without `prompt` it is asked as its drawing config says
        (`self.drawing.continuation_procedure`): in a chat turn (`USER: Continue the
        video.<vision>frames</vision> ASSISTANT: <vision>`) where it draws a new vision block, or in
        the request's own block (`USER: Continue the video.<vision>frames`, then more frames); with
        `prompt`, the frames open the vision block of LWM's video prompt for it and the model goes on
        drawing in that block. Returns the new frames only, at the input's fps
        when it is a `Video`. Settings left at None are the model's (`self.drawing.continuation`).
        """
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        frames = self._load(source, "video")
        if fps is None:
            fps = source.fps if isinstance(source, Video) else DEFAULT_FPS
        codes = torch.from_numpy(self.processor.encode_media({"type": "video", "frames": frames}))
        sampling = with_settings(self.drawing.continuation, temperature, top_k, 1.0)
        if prompt is None:
            new_codes = self.continue_codes(codes, num_frames, sampling, seed=seed, progress=progress)
            return Video(self._decode_codes(new_codes, context=codes), fps)
        prompt_ids = self.processor.generation_prompt(prompt, "video")["input_ids"]
        self._check_fits(len(prompt_ids) + self._frame_tokens(len(codes)), self._frame_tokens(num_frames))
        with self._progress(self._frame_tokens(num_frames), "continuing", progress):
            new_codes = vision.continue_video(
                self.model,
                prompt_ids.to(self.device),
                codes.to(self.device),
                num_frames=num_frames,
                sampling=sampling,
                generator=self._generator(seed),
            )
        return Video(self._decode_codes(new_codes, context=codes), fps)

    def continuation_prompt(self, codes: torch.Tensor) -> torch.LongTensor:
        """The ids after which the model draws the frames that follow the video of `codes` `[frames, h, w]`,
        by `self.drawing.continuation_procedure`: the chat turn a continuation is trained on, `USER:
        Continue the video.<vision>frames</vision> ASSISTANT: <vision>`, or (in_block) the request with
        its frames left open, `USER: Continue the video.<vision>frames`, each frame closed by `<eof>`."""
        request = [{"role": "user", "content": [{"type": "text", "text": CONTINUATION_REQUEST},
                                                {"type": "video", "codes": codes}]}]
        ids = self.processor.apply_chat_template(request, add_generation_prompt=True, generation_mode="vision")["input_ids"]
        if self.drawing.continuation_procedure == "chat":
            return ids
        block_start = int(torch.nonzero(ids >= self.processor.text_vocab_size)[0])
        layout = FrameLayout.from_config(self.model.config, self.processor.codes_per_frame)
        return torch.cat([ids[:block_start], layout.frame_ids(codes.to(ids.device))])

    def continue_codes(self, codes: torch.Tensor, num_frames: int, sampling: SamplingConfig, *,
                       seed: int | None = None, progress: bool = False) -> torch.LongTensor:
        """The codes `[num_frames, h, w]` of the frames after the video of `codes`, drawn with `sampling`."""
        prompt_ids = self.continuation_prompt(codes)
        self._check_fits(len(prompt_ids), self._frame_tokens(num_frames))
        with self._progress(self._frame_tokens(num_frames), "continuing", progress):
            return vision.generate_video(
                self.model, prompt_ids.to(self.device), None, num_frames=num_frames, frame_shape=self._frame_shape,
                first_frame_sampling=sampling, sampling=sampling, generator=self._generator(seed),
            )

    # ------------------------------------------------------------------ media

    def load_media(self, source: MediaInput, kind: MediaKind | None = None) -> np.ndarray:
        """Media -> uint8 frames: `[H, W, 3]` for an image, `[T, H, W, 3]` (at most `max_frames`) for a video."""
        return self._load(source, kind or media_kind(source))

    def _load(self, source: MediaInput, kind: MediaKind) -> np.ndarray:
        if isinstance(source, Video):
            source = source.frames
        if isinstance(source, (str, os.PathLike)) and str(source).startswith(("http://", "https://")):
            raise ValueError(f"{source}: LWM reads local files only; download the file first")
        if isinstance(source, (str, os.PathLike)):
            source = media.user_path(source)
        if kind == "image":
            return media.load_image(source)
        return media.load_video(source, max_frames=self.max_frames)

    def _resolve_media(self, message: dict) -> dict:
        """A message whose media parts (given as sources) are replaced by decoded frames."""
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            return message
        parts = []
        for part in message["content"]:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("image", "video") and "frames" not in part and "codes" not in part:
                source = next((part[key] for key in (kind, "path", "url") if key in part), None)
                if source is None:
                    raise ValueError(f"a {kind} part needs the media under {kind!r} or 'path'")
                part = {"type": kind, "frames": self._load(source, kind)}
            parts.append(part)
        return {**message, "content": parts}

    def _decode_codes(self, codes: torch.Tensor, context: torch.Tensor | None = None) -> np.ndarray:
        """Codes `[T, h, w]` -> uint8 frames; `context`: the codes of the video they continue."""
        vqgan = self.processor.vqgan
        parameter = next(vqgan.parameters(), None)
        device = parameter.device if parameter is not None else codes.device
        context = None if context is None else context.to(device)
        return media.to_uint8(vqgan.decode_video(codes.to(device), context=context))

    # ------------------------------------------------------------------ helpers

    @property
    def _frame_shape(self) -> tuple[int, int]:
        grid = self.processor.vqgan.grid_size
        return (grid, grid)

    def _frame_tokens(self, num_frames: int) -> int:
        return num_frames * (self.processor.codes_per_frame + 1)

    def _generation_prompt(self, prompt: str, kind: MediaKind, num_frames: int) -> torch.LongTensor:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt must be a non-empty string")
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        ids = self.processor.generation_prompt(prompt, kind)["input_ids"]
        self._check_fits(len(ids), self._frame_tokens(num_frames))
        return ids

    def _check_fits(self, prompt_tokens: int, new_tokens: int) -> None:
        if prompt_tokens + new_tokens > self.context_length:
            raise ContextLengthError(self.context_length, prompt_tokens, new_tokens)

    def _generator(self, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        if not 0 <= seed < 1 << 63:
            raise ValueError(f"seed must lie in [0, 2**63), got {seed}")
        return torch.Generator(device=self.device).manual_seed(int(seed))

    @contextlib.contextmanager
    def _progress(self, total: int, description: str, enabled: bool):
        """A tqdm bar that advances once per forward pass of the decoder (one token per step)."""
        if not enabled:
            yield
            return
        from tqdm import tqdm

        with tqdm(total=total, desc=description, unit="tok", leave=False) as bar:

            def advance(*_) -> None:  # a forward hook that returns something would replace the output
                bar.update(1)

            hook = self.model.register_forward_hook(advance)
            try:
                yield
            finally:
                hook.remove()


def media_kind(source: MediaInput) -> MediaKind:
    """Whether a media source is an image or a video (files and bytes are judged from their bytes)."""
    if isinstance(source, Video):
        return "video"
    if isinstance(source, Image.Image):
        return "video" if getattr(source, "is_animated", False) else "image"
    if isinstance(source, np.ndarray):
        if source.ndim == 3:
            return "image"
        if source.ndim == 4:
            return "video"
        raise media.MediaError(media.describe(source), "expected frames [H, W, 3] or [T, H, W, 3]")
    if isinstance(source, (str, os.PathLike)):
        found = media.sniff_media_type(media.user_path(source))
    elif isinstance(source, (bytes, bytearray)):
        found = media.sniff_media_type(bytes(source))
    else:
        raise media.MediaError(media.describe(source), f"unsupported media source type {type(source).__name__}")
    if found is None:
        raise media.MediaError(media.describe(source), "not a supported image or video format")
    return found


def text_sampling(temperature: float, top_k: int | None, top_p: float | None) -> SamplingConfig:
    if temperature < 0:
        raise ValueError(f"temperature must be 0 (greedy) or positive, got {temperature}")
    if temperature == 0:
        return SamplingConfig(do_sample=False)
    return SamplingConfig(temperature=temperature, top_k=top_k or None, top_p=top_p)


def with_settings(base: SamplingConfig, temperature: float | None = None, top_k: int | None = None,
                  guidance_scale: float | None = None) -> SamplingConfig:
    """`base` with the settings a caller gave (None keeps base's): temperature 0 is greedy, top_k 0 turns
    top-k off."""
    changes = {}
    if temperature is not None:
        if temperature < 0:
            raise ValueError(f"temperature must be 0 (greedy) or positive, got {temperature}")
        changes = {"do_sample": False} if temperature == 0 else {"do_sample": True, "temperature": temperature}
    if top_k is not None:
        changes["top_k"] = top_k or None
    if guidance_scale is not None:
        changes["guidance_scale"] = guidance_scale
    return dataclasses.replace(base, **changes)


def model_folder(path: str | os.PathLike) -> Path:
    """The folder a model path names ("bundled" is the shipped model), checked to hold a model."""
    if str(path) == BUNDLED:
        if not (BUNDLED_DIR / "config.json").is_file():
            raise FileNotFoundError(
                "the bundled model is not shipped yet. Pass a model folder instead: `--model DIR` on the "
                "command line or LWM.from_pretrained(DIR) in Python, where DIR was written by "
                "LWM.save_pretrained or `lwm convert`"
            )
        return BUNDLED_DIR
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder}: not a model folder (no config.json); expected a folder written by LWM.save_pretrained"
        )
    return folder


def _torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in names:
        raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
    return names[dtype]
