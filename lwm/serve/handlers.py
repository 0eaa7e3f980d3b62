"""What the server's routes do: chat completions (media fetched and decoded beside the model, SSE
streaming), image and video generations, video jobs, health and metrics.

Every check of a request that can be made before the model is reached is made here, and fails with
an OpenAI-shaped 4xx `APIError` (lwm.serve.errors); the model runs in the worker's thread.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse

from lwm import media
from lwm.api import LWM
from lwm.serve.errors import APIError, client_error, error_body
from lwm.serve.media_fetch import MediaFetchError, fetch_media
from lwm.serve.schemas import ChatCompletionRequest, ImageGenerationRequest, ServerConfig, VideoGenerationRequest
from lwm.serve.worker import ModelWorker, VideoJobs

logger = logging.getLogger("lwm.serve")


class Handlers:
    """What each route does, given the model's worker and the server's settings; the routes of
    `lwm.serve.app` hand their requests over to these."""

    def __init__(self, worker: ModelWorker, config: ServerConfig):
        self.worker, self.config = worker, config
        self.jobs = VideoJobs(config.max_queue)

    def health(self) -> JSONResponse | dict:
        if self.worker.state == "ready":
            return {"status": "ok"}
        return JSONResponse({"status": self.worker.state}, status_code=503)

    def metrics(self) -> str:
        worker = self.worker
        return (
            "# TYPE lwm_requests_running gauge\n"
            f"lwm_requests_running {worker.running}\n"
            "# TYPE lwm_requests_waiting gauge\n"
            f"lwm_requests_waiting {worker.waiting}\n"
            "# TYPE lwm_requests_served_total counter\n"
            f"lwm_requests_served_total {worker.served}\n"
        )

    def models(self) -> dict:
        entry = {"id": self.config.model_name, "object": "model", "created": 0, "owned_by": "lwm"}
        return {"object": "list", "data": [entry]}

    async def chat_completions(self, body: ChatCompletionRequest) -> dict | StreamingResponse:
        if body.n != 1:
            raise APIError(400, "only n=1 is supported", param="n")
        if body.stop:
            raise APIError(400, "stop sequences are not supported", param="stop")
        options = _answer_options(body)
        max_frames = self.worker.ready_model().max_frames
        messages = await _to_lwm_messages(body.messages, self.config, max_frames)
        if body.stream:
            return await _stream_chat(self.worker, messages, options, body, self.config)
        reply = await _run(self.worker, lambda lwm: _read(lwm.chat(messages, stream=True, **options)))
        created, completion_id = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": self.config.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.text},
                    "finish_reason": reply.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": _usage(reply),
        }

    async def image_generations(self, body: ImageGenerationRequest) -> dict:
        _check_b64_json(body.response_format)
        if not 1 <= body.n <= self.config.max_images:
            raise APIError(400, f"n must lie between 1 and {self.config.max_images}", param="n")
        _check_prompt(body.prompt)

        def draw(lwm: LWM) -> list[str]:
            _check_size(body.size, lwm.resolution)
            options = {} if body.guidance_scale is None else {"guidance_scale": body.guidance_scale}
            encoded = []
            for index in range(body.n):
                seed = None if body.seed is None else body.seed + index
                image = lwm.generate_image(body.prompt, seed=seed, **options)
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                encoded.append(base64.b64encode(buffer.getvalue()).decode())
            return encoded

        encoded = await _run(self.worker, draw)
        return {"created": int(time.time()), "data": [{"b64_json": item} for item in encoded]}

    async def video_generations(self, body: VideoGenerationRequest) -> dict:
        _check_b64_json(body.response_format)
        _check_video_request(body, self.config)
        data = await _draw_video(self.worker, body)
        item = {"b64_json": base64.b64encode(data).decode(), "mime_type": "video/mp4",
                "num_frames": body.num_frames, "fps": body.fps}
        return {"created": int(time.time()), "data": [item]}

    def create_video_job(self, body: VideoGenerationRequest) -> dict:
        """vLLM-Omni's asynchronous variant: a job is answered at once, its MP4 fetched when completed."""
        _check_video_request(body, self.config)
        job = self.jobs.create(self.config.model_name, body)
        self.jobs.start(job, _draw_video(self.worker, body))
        return self.jobs.public(job)

    def video_job(self, job_id: str) -> dict:
        return self.jobs.public(self.jobs.get(job_id))

    def video_job_content(self, job_id: str) -> Response:
        job = self.jobs.get(job_id)
        if job["status"] != "completed":
            raise APIError(400, f"the video is not ready (status: {job['status']})", code="video_not_ready")
        return Response(job["content"], media_type="video/mp4")


# ---------------------------------------------------------------------------------------- chat


async def _to_lwm_messages(raw_messages: list[Any], config: ServerConfig, max_frames: int) -> list[dict]:
    """OpenAI messages -> LWM messages, media fetched and decoded (in the thread pool), videos as
    `max_frames` frames."""
    if not raw_messages:
        raise APIError(400, "messages must hold at least one message", param="messages")
    messages, media_count = [], 0
    for index, message in enumerate(raw_messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise APIError(400, f"{where} must be an object with 'role' and 'content'", param=where)
        role = message.get("role")
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant"):
            raise APIError(400, f"{where}.role must be 'system', 'user' or 'assistant'", param=f"{where}.role")
        content = message.get("content")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
            continue
        if not isinstance(content, list) or not content:
            raise APIError(400, f"{where}.content must be a string or a non-empty list of parts", param=where)
        parts = []
        for position, part in enumerate(content):
            part_where = f"{where}.content[{position}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise APIError(400, f"{part_where}.text must be a string", param=part_where)
                parts.append({"type": "text", "text": part["text"]})
                continue
            if kind not in ("image_url", "video_url"):
                raise APIError(400, f"{part_where}: unsupported part type {str(kind)[:40]!r} "
                                    "(use text, image_url or video_url)", param=part_where)
            if role != "user":
                raise APIError(400, f"{part_where}: only user messages may hold images or videos", param=part_where)
            media_count += 1
            if media_count > config.max_media_per_request:
                raise APIError(400, f"too many images and videos: this server accepts at most "
                                    f"{config.max_media_per_request} per request", param=part_where)
            parts.append(await _media_part(part, kind.removesuffix("_url"), part_where, config, max_frames))
        messages.append({"role": role, "content": parts})
    _check_turns(messages)
    return messages


def _check_turns(messages: list[dict]) -> None:
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    if any(message["role"] == "system" for message in turns):
        raise APIError(400, "only the first message may be a system message", param="messages")
    for position, message in enumerate(turns):
        expected = "user" if position % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise APIError(400, "messages must alternate user and assistant turns, starting and ending with user",
                           param="messages")
    if not turns or turns[-1]["role"] != "user":
        raise APIError(400, "the last message must be a user message", param="messages")


async def _media_part(part: dict, kind: str, where: str, config: ServerConfig, max_frames: int) -> dict:
    holder = part.get(f"{kind}_url")
    url = holder.get("url") if isinstance(holder, dict) else holder
    if not isinstance(url, str):
        raise APIError(400, f"{where}.{kind}_url.url must be a string", param=where)
    try:
        data = await asyncio.to_thread(fetch_media, url, kind, config.media)
    except MediaFetchError as error:
        raise APIError(400, f"{where}: {error}", code="invalid_media", param=where) from None
    try:
        frames = await asyncio.to_thread(_decode_media, data, kind, config, max_frames)
    except media.MediaError as error:
        logger.info("refused the %s of %s: %s", kind, where, error)
        if isinstance(error, media.MediaLimitError):
            raise APIError(400, f"{where}: the {kind} is larger than this server's limits ({config.max_pixels} "
                                f"decoded pixels, {config.max_demuxed_frames} frames, "
                                f"{config.max_decode_seconds:g} s of decoding)", code="invalid_media",
                           param=where) from None
        raise APIError(400, f"{where}: the {kind} could not be decoded (corrupt, truncated or unsupported)",
                       code="invalid_media", param=where) from None
    return {"type": kind, "frames": frames}


def _decode_media(data: bytes, kind: str, config: ServerConfig, max_frames: int):
    if kind == "image":
        return media.load_image(data, pixel_limit=config.max_pixels)
    return media.load_video(data, max_frames=max_frames, frame_limit=config.max_demuxed_frames,
                            pixel_limit=config.max_pixels, time_limit=config.max_decode_seconds)


def _answer_options(body: ChatCompletionRequest) -> dict:
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if max_tokens is not None and max_tokens < 1:
        raise APIError(400, "max_tokens must be at least 1", param="max_tokens")
    if body.temperature is not None and not 0 <= body.temperature <= 2:
        raise APIError(400, "temperature must lie in [0, 2]", param="temperature")
    if body.top_p is not None and not 0 < body.top_p <= 1:
        raise APIError(400, "top_p must lie in (0, 1]", param="top_p")
    if body.top_k is not None and body.top_k < 1:
        raise APIError(400, "top_k must be at least 1", param="top_k")
    return {
        "temperature": body.temperature or 0.0,  # greedy unless asked
        "top_p": body.top_p,
        "top_k": body.top_k,
        "max_new_tokens": max_tokens,
        "seed": body.seed,
    }


def _read(stream):
    stream.read()
    return stream


def _usage(stream) -> dict:
    return {
        "prompt_tokens": stream.prompt_tokens,
        "completion_tokens": stream.completion_tokens,
        "total_tokens": stream.prompt_tokens + stream.completion_tokens,
    }


async def _run(worker: ModelWorker, job: Callable[[LWM], Any]):
    """Runs a job on the model; its errors become client errors."""
    return await _result(worker.submit(job))


async def _result(future: asyncio.Future):
    """The result of a job; a request that is cancelled (the client left) skips the job if not started."""
    try:
        return await future
    except asyncio.CancelledError:
        future.cancel()
        raise
    except Exception as error:
        raise client_error(error) from None


_START, _END = object(), object()


async def _stream_chat(worker: ModelWorker, messages, options, body: ChatCompletionRequest, config: ServerConfig):
    """Server-sent events: role chunk, content chunks, a finish chunk (and usage if asked), [DONE].

    The prompt is built before the response starts, so errors in the input are plain 4xx replies.
    """
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def emit(event) -> None:
        loop.call_soon_threadsafe(events.put_nowait, event)

    def job(lwm: LWM):
        try:
            stream = lwm.chat(messages, stream=True, **options)
            emit(_START)
            for piece in stream:
                emit(piece)
                if stop.is_set():  # the client left
                    stream.close()
                    break
            return stream
        finally:
            emit(_END)

    future = worker.submit(job)
    try:
        first = await events.get()
    except asyncio.CancelledError:
        stop.set()
        future.cancel()
        raise
    if first is _END:
        await _result(future)  # raises the client error

    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: dict, finish_reason: str | None = None, **extra) -> str:
        payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                   "model": config.model_name,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
                   **extra}
        return f"data: {json.dumps(payload)}\n\n"

    async def sse():
        try:
            yield chunk({"role": "assistant", "content": ""})
            while (event := await events.get()) is not _END:
                yield chunk({"content": event})
            try:
                stream = await _result(future)
            except APIError as error:
                yield f"data: {json.dumps(error_body(error.status, error.message, error.code))}\n\n"
                yield "data: [DONE]\n\n"
                return
            yield chunk({}, stream.finish_reason)
            if body.stream_options is not None and body.stream_options.include_usage:
                payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                           "model": config.model_name, "choices": [], "usage": _usage(stream)}
                yield f"data: {json.dumps(payload)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            stop.set()

    return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# ---------------------------------------------------------------------------------------- generation


def _check_b64_json(response_format: str | None) -> None:
    if response_format not in (None, "b64_json"):
        raise APIError(400, "only response_format 'b64_json' is supported", param="response_format")


def _check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise APIError(400, "prompt must not be empty", param="prompt")


def _check_size(size: str | None, resolution: int) -> None:
    if size in (None, "auto", f"{resolution}x{resolution}"):
        return
    raise APIError(400, f"this model draws {resolution}x{resolution} images; size must be "
                        f"'{resolution}x{resolution}' or 'auto'", param="size")


def _check_video_request(body: VideoGenerationRequest, config: ServerConfig) -> None:
    if not 1 <= body.num_frames <= config.max_output_frames:
        raise APIError(400, f"num_frames must lie between 1 and this server's limit of {config.max_output_frames}",
                       param="num_frames")
    if not 0 < body.fps <= 60:
        raise APIError(400, "fps must lie in (0, 60]", param="fps")
    _check_prompt(body.prompt)


async def _draw_video(worker: ModelWorker, body: VideoGenerationRequest) -> bytes:
    """The MP4 of a video generation (drawn on the model, encoded in the thread pool)."""
    options = {} if body.guidance_scale is None else {"guidance_scale": body.guidance_scale}
    video = await _run(
        worker,
        lambda lwm: lwm.generate_video(body.prompt, num_frames=body.num_frames, fps=body.fps, seed=body.seed,
                                       **options),
    )
    return await asyncio.to_thread(_mp4_bytes, video)


def _mp4_bytes(video) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "video.mp4"
        video.save(path)
        return path.read_bytes()
