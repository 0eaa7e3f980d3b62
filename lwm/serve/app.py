"""An OpenAI-compatible HTTP server over one model (FastAPI): thin routes over `Handlers`.

Routes: `POST /v1/chat/completions` (text, `image_url` and `video_url` parts; SSE streaming),
`POST /v1/images/generations` (PNG as `b64_json`), `POST /v1/videos/generations` (MP4 as
`b64_json`, synchronous), `POST /v1/videos` + `GET /v1/videos/{id}` + `GET /v1/videos/{id}/content`
(the same as a job, vLLM-Omni style), `GET /v1/models`, `GET /health` (503 while the model loads),
`GET /metrics` (Prometheus text).

    schemas.py   the server's settings and the request bodies
    handlers.py  what each route does
    worker.py    the one thread that owns the model, and video jobs
    errors.py    OpenAI-shaped errors and the request-body limit
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Callable

from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse

from lwm.api import LWM
from lwm.serve.errors import APIError, BodyLimitMiddleware, install_error_handlers
from lwm.serve.handlers import Handlers
from lwm.serve.schemas import ChatCompletionRequest, ImageGenerationRequest, ServerConfig, VideoGenerationRequest
from lwm.serve.worker import ModelWorker


def create_app(load_model: Callable[[], LWM], config: ServerConfig = ServerConfig()) -> FastAPI:
    """The FastAPI app. `load_model` runs in the worker thread at startup; /health is 503 until it returns."""
    worker = ModelWorker(load_model, config.max_queue)
    handlers = Handlers(worker, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        await asyncio.to_thread(worker.stop, 30.0)

    app = FastAPI(title="LWM", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.worker = worker
    app.state.config = config
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    install_error_handlers(app)

    async def require_api_key(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), config.api_key.encode()):
            raise APIError(401, "Incorrect or missing API key (send it as 'Authorization: Bearer KEY').",
                           code="invalid_api_key")

    authorized = [Depends(require_api_key)]

    @app.get("/health")
    async def health():
        return handlers.health()

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return handlers.metrics()

    @app.get("/v1/models", dependencies=authorized)
    async def models():
        return handlers.models()

    @app.post("/v1/chat/completions", dependencies=authorized)
    async def chat_completions(body: ChatCompletionRequest):
        return await handlers.chat_completions(body)

    @app.post("/v1/images/generations", dependencies=authorized)
    async def images(body: ImageGenerationRequest):
        return await handlers.image_generations(body)

    @app.post("/v1/videos/generations", dependencies=authorized)
    async def videos(body: VideoGenerationRequest):
        return await handlers.video_generations(body)

    @app.post("/v1/videos", dependencies=authorized)
    async def create_video_job(body: VideoGenerationRequest):
        return handlers.create_video_job(body)

    @app.get("/v1/videos/{job_id}", dependencies=authorized)
    async def video_job(job_id: str):
        return handlers.video_job(job_id)

    @app.get("/v1/videos/{job_id}/content", dependencies=authorized)
    async def video_job_content(job_id: str):
        return handlers.video_job_content(job_id)

    return app
