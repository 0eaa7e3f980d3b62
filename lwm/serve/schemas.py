"""What the server accepts: its settings and limits, and the OpenAI-shaped request bodies (pydantic;
unknown fields are ignored, as OpenAI's clients send some this server does not use)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from lwm.serve.media_fetch import MediaPolicy


@dataclass(frozen=True)
class ServerConfig:
    """The server's settings and limits (`lwm serve` flags). An input video is read as the model's
    `max_frames` frames (`LWM.max_frames`), whatever the request."""

    model_name: str = "lwm"
    api_key: str | None = None
    media: MediaPolicy = field(default_factory=MediaPolicy)
    max_body_bytes: int = 64 << 20
    max_media_per_request: int = 8
    max_output_frames: int = 16  # frames a video generation may ask for
    max_pixels: int = 1 << 26  # decoded pixels per media item
    max_demuxed_frames: int = 20_000  # frames a video may hold before it is refused, undecoded
    max_decode_seconds: float = 30.0  # decoding one video stops here
    max_images: int = 4  # n of an image generation
    max_queue: int = 64  # requests waiting for the model


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


Seed = Annotated[int, Field(ge=0, lt=1 << 62)]  # torch seeds are 64-bit; n images use seed + index


class StreamOptions(_Body):
    include_usage: bool = False


class ChatCompletionRequest(_Body):
    messages: list[Any]
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: Seed | None = None
    n: int = 1
    stop: str | list[str] | None = None


class ImageGenerationRequest(_Body):
    prompt: str
    model: str | None = None
    n: int = 1
    size: str | None = None
    response_format: str | None = "b64_json"
    seed: Seed | None = None
    guidance_scale: float | None = None


class VideoGenerationRequest(_Body):
    prompt: str
    model: str | None = None
    num_frames: int = 8
    fps: float = 8.0
    seed: Seed | None = None
    guidance_scale: float | None = None
    response_format: str | None = "b64_json"
