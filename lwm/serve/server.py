"""An OpenAI-compatible HTTP server over one model (FastAPI).

Routes: `POST /v1/chat/completions` (text, `image_url` and `video_url` parts; SSE streaming),
`POST /v1/images/generations` (PNG as `b64_json`), `POST /v1/videos/generations` (MP4 as
`b64_json`, synchronous), `POST /v1/videos` + `GET /v1/videos/{id}` + `GET /v1/videos/{id}/content`
(the same as a job, vLLM-Omni style), `GET /v1/models`, `GET /health` (503 while the model loads),
`GET /metrics` (Prometheus text).

One worker thread owns the model and runs one request at a time, in arrival order, from a bounded
queue (requests are not batched). Everything that can be done beside it is: media URLs are
fetched and decoded in the thread pool, with every limit checked while reading (media_fetch.py).

Errors are OpenAI-shaped, `{"error": {"message", "type", "param", "code"}}`. Messages are written
here; exception text never reaches a client (it is logged instead).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import io
import json
import logging
import queue
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from lwm import media
from lwm.api import LWM, ContextLengthError
from lwm.serve.media_fetch import MediaFetchError, MediaPolicy, fetch_media
from lwm.tokenizers.processing_lwm import InvalidTextError, SequenceTooLongError

logger = logging.getLogger("lwm.serve")


@dataclass(frozen=True)
class ServerConfig:
    model_name: str = "lwm"
    api_key: str | None = None
    media: MediaPolicy = field(default_factory=MediaPolicy)
    max_body_bytes: int = 64 << 20
    max_media_per_request: int = 8
    max_input_frames: int = 16  # frames sampled from an input video, whatever its length
    max_output_frames: int = 16  # frames a video generation may ask for
    max_pixels: int = 1 << 26  # decoded pixels per media item
    max_demuxed_frames: int = 20_000  # frames a video may hold before it is refused, undecoded
    max_decode_seconds: float = 30.0  # decoding one video stops here
    max_images: int = 4  # n of an image generation
    max_queue: int = 64  # requests waiting for the model


class APIError(Exception):
    """An error for the client: its message is shown as is, so it never holds exception text."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ---------------------------------------------------------------------------------------- the worker


class ModelWorker:
    """Owns the model in one thread: loads it, then runs submitted jobs one at a time, in order."""

    def __init__(self, load_model: Callable[[], LWM], max_queue: int):
        self._load_model = load_model
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name="lwm-model", daemon=True)
        self.max_queue = max_queue
        self.state = "loading"  # then "ready", "failed" or "stopped"
        self.model: LWM | None = None
        self.waiting = self.running = self.served = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuses new jobs, lets the queued ones finish (up to `timeout`), then ends the thread."""
        self.state = "stopped"
        self._jobs.put(None)
        self._thread.join(timeout)

    def submit(self, job: Callable[[LWM], Any]) -> asyncio.Future:
        """Queues `job(model)`; the future resolves with its result. Cancelling it skips a job not yet started."""
        if self.state == "loading":
            raise APIError(503, "the model is still loading; retry shortly", code="model_loading")
        if self.state != "ready":
            raise APIError(503, "the model is not available", code="model_unavailable")
        with self._lock:
            if self.waiting >= self.max_queue:
                raise APIError(503, f"the server is busy ({self.max_queue} requests waiting); retry shortly",
                               code="server_busy")
            self.waiting += 1
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((job, future, loop))
        return future

    def _main(self) -> None:
        try:
            self.model = self._load_model()
        except Exception:
            logger.exception("loading the model failed")
            self.state = "failed"
            return
        if self.state == "loading":
            self.state = "ready"
        while (item := self._jobs.get()) is not None:
            self._run(*item)

    def _run(self, job, future: asyncio.Future, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self.waiting -= 1
            self.running += 1
        try:
            if future.cancelled():
                return
            try:
                result = job(self.model)
            except BaseException as error:  # delivered to the request, which decides what the client sees
                loop.call_soon_threadsafe(_settle, future, None, error)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)
        except RuntimeError:  # the event loop closed under us (shutdown): nobody is waiting any more
            pass
        finally:
            with self._lock:
                self.running -= 1
                self.served += 1


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# ---------------------------------------------------------------------------------------- request bodies


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


# ---------------------------------------------------------------------------------------- the app


def create_app(load_model: Callable[[], LWM], config: ServerConfig = ServerConfig()) -> FastAPI:
    """The FastAPI app. `load_model` runs in the worker thread at startup; /health is 503 until it returns."""
    worker = ModelWorker(load_model, config.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        await asyncio.to_thread(worker.stop, 30.0)

    app = FastAPI(title="LWM", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.worker = worker
    app.state.config = config
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    _add_error_handlers(app)

    async def require_api_key(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), config.api_key.encode()):
            raise APIError(401, "Incorrect or missing API key (send it as 'Authorization: Bearer KEY').",
                           code="invalid_api_key")

    @app.get("/health")
    async def health():
        if worker.state == "ready":
            return {"status": "ok"}
        return JSONResponse({"status": worker.state}, status_code=503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return (
            "# TYPE lwm_requests_running gauge\n"
            f"lwm_requests_running {worker.running}\n"
            "# TYPE lwm_requests_waiting gauge\n"
            f"lwm_requests_waiting {worker.waiting}\n"
            "# TYPE lwm_requests_served_total counter\n"
            f"lwm_requests_served_total {worker.served}\n"
        )

    @app.get("/v1/models", dependencies=[Depends(require_api_key)])
    async def models():
        entry = {"id": config.model_name, "object": "model", "created": 0, "owned_by": "lwm"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions", dependencies=[Depends(require_api_key)])
    async def chat_completions(body: ChatCompletionRequest):
        if body.n != 1:
            raise APIError(400, "only n=1 is supported", param="n")
        if body.stop:
            raise APIError(400, "stop sequences are not supported", param="stop")
        options = _answer_options(body)
        messages = await _to_lwm_messages(body.messages, config)
        if body.stream:
            return await _stream_chat(worker, messages, options, body, config)
        reply = await _run(worker, lambda lwm: _read(lwm.chat(messages, stream=True, **options)))
        created, completion_id = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": config.model_name,
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

    @app.post("/v1/images/generations", dependencies=[Depends(require_api_key)])
    async def images(body: ImageGenerationRequest):
        _check_b64_json(body.response_format)
        if not 1 <= body.n <= config.max_images:
            raise APIError(400, f"n must lie between 1 and {config.max_images}", param="n")
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

        encoded = await _run(worker, draw)
        return {"created": int(time.time()), "data": [{"b64_json": item} for item in encoded]}

    @app.post("/v1/videos/generations", dependencies=[Depends(require_api_key)])
    async def videos(body: VideoGenerationRequest):
        _check_b64_json(body.response_format)
        _check_video_request(body, config)
        data = await _draw_video(worker, body)
        item = {"b64_json": base64.b64encode(data).decode(), "mime_type": "video/mp4",
                "num_frames": body.num_frames, "fps": body.fps}
        return {"created": int(time.time()), "data": [item]}

    # vLLM-Omni's asynchronous variant: a job is answered at once, its MP4 fetched when completed.
    jobs = VideoJobs(config.max_queue)

    @app.post("/v1/videos", dependencies=[Depends(require_api_key)])
    async def create_video_job(body: VideoGenerationRequest):
        _check_video_request(body, config)
        job = jobs.create(config.model_name, body)
        jobs.start(job, _draw_video(worker, body))
        return jobs.public(job)

    @app.get("/v1/videos/{job_id}", dependencies=[Depends(require_api_key)])
    async def video_job(job_id: str):
        return jobs.public(jobs.get(job_id))

    @app.get("/v1/videos/{job_id}/content", dependencies=[Depends(require_api_key)])
    async def video_job_content(job_id: str):
        job = jobs.get(job_id)
        if job["status"] != "completed":
            raise APIError(400, f"the video is not ready (status: {job['status']})", code="video_not_ready")
        return Response(job["content"], media_type="video/mp4")

    return app


# ---------------------------------------------------------------------------------------- chat helpers


async def _to_lwm_messages(raw_messages: list[Any], config: ServerConfig) -> list[dict]:
    """OpenAI messages -> LWM messages, media fetched and decoded (in the thread pool)."""
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
            parts.append(await _media_part(part, kind.removesuffix("_url"), part_where, config))
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


async def _media_part(part: dict, kind: str, where: str, config: ServerConfig) -> dict:
    holder = part.get(f"{kind}_url")
    url = holder.get("url") if isinstance(holder, dict) else holder
    if not isinstance(url, str):
        raise APIError(400, f"{where}.{kind}_url.url must be a string", param=where)
    try:
        data = await asyncio.to_thread(fetch_media, url, kind, config.media)
    except MediaFetchError as error:
        raise APIError(400, f"{where}: {error}", code="invalid_media", param=where) from None
    try:
        frames = await asyncio.to_thread(_decode_media, data, kind, config)
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


def _decode_media(data: bytes, kind: str, config: ServerConfig):
    if kind == "image":
        return media.load_image(data, pixel_limit=config.max_pixels)
    return media.load_video(data, max_frames=config.max_input_frames, frame_limit=config.max_demuxed_frames,
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
        raise _client_error(error) from None


def _client_error(error: Exception) -> APIError:
    if isinstance(error, APIError):
        return error
    if isinstance(error, ContextLengthError):
        return APIError(400, str(error), code="context_length_exceeded", param="messages")
    if isinstance(error, InvalidTextError):
        return APIError(400, "the text is not valid Unicode: it holds a lone surrogate (such as \\ud800); send UTF-8 "
                             "text", code="invalid_text")
    if isinstance(error, SequenceTooLongError):
        return APIError(400, "the request does not fit in the model's context", code="context_length_exceeded",
                        param="messages")
    if isinstance(error, (ValueError, media.MediaError)):
        logger.info("refused a request: %s", error)
        return APIError(400, "the request could not be processed: invalid input", code="invalid_request")
    logger.error("a request failed", exc_info=error)
    return APIError(500, "internal server error", code="internal_error")


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



# ---------------------------------------------------------------------------------------- generation helpers


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


class VideoJobs:
    """Video generation jobs, "queued" until "completed" or "failed". The newest `keep` jobs are kept."""

    def __init__(self, keep: int):
        self.keep = max(keep, 1)
        self._jobs: dict[str, dict] = {}
        self._tasks: set[asyncio.Task] = set()

    def create(self, model_name: str, body: VideoGenerationRequest) -> dict:
        job = {"id": f"video_{uuid.uuid4().hex}", "object": "video", "model": model_name, "status": "queued",
               "created_at": int(time.time()), "completed_at": None, "prompt": body.prompt,
               "num_frames": body.num_frames, "fps": body.fps, "error": None, "content": None}
        self._jobs[job["id"]] = job
        while len(self._jobs) > self.keep:
            self._jobs.pop(next(iter(self._jobs)))
        return job

    def start(self, job: dict, drawing) -> None:
        async def run():
            try:
                job["content"] = await drawing
                job["status"] = "completed"
            except Exception as error:
                failure = _client_error(error)
                job["status"], job["error"] = "failed", {"message": failure.message, "code": failure.code}
            job["completed_at"] = int(time.time())

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def get(self, job_id: str) -> dict:
        if job_id not in self._jobs:
            raise APIError(404, "no such video job", code="not_found", param="id")
        return self._jobs[job_id]

    @staticmethod
    def public(job: dict) -> dict:
        return {key: value for key, value in job.items() if key != "content"}


def _mp4_bytes(video) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "video.mp4"
        video.save(path)
        return path.read_bytes()


# ---------------------------------------------------------------------------------------- errors and limits


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return JSONResponse(error_body(error.status, error.message, error.code, error.param), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        problems = error.errors()
        if any(problem.get("type") == "json_invalid" for problem in problems):
            return JSONResponse(error_body(400, "the request body is not valid JSON", "invalid_json"), status_code=400)
        first = problems[0] if problems else {}
        location = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
        message = f"invalid request: {location}: {first.get('msg', 'invalid value')}"
        return JSONResponse(error_body(400, message, "invalid_request", location), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        messages = {404: "no such route", 405: "method not allowed for this route"}
        message = messages.get(error.status_code, "the request could not be served")
        return JSONResponse(error_body(error.status_code, message), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception):
        logger.error("unhandled error", exc_info=error)
        return JSONResponse(error_body(500, "internal server error", "internal_error"), status_code=500)


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with 413, counting while reading (Content-Length or not)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._refuse(send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send) -> None:
        message = f"the request body is larger than this server's limit of {self.max_bytes} bytes"
        response = JSONResponse(error_body(413, message, "body_too_large"), status_code=413)
        await response({"type": "http"}, _no_receive, send)


async def _no_receive():
    return {"type": "http.disconnect"}
