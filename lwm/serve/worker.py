"""What runs beside the HTTP routes: the one thread that owns the model, and video generation jobs.

The worker loads the model, then runs submitted jobs one at a time, in arrival order, from a bounded
queue (requests are not batched). A job's result or error is delivered to the waiting request on the
event loop. Video jobs (vLLM-Omni's asynchronous variant) are answered at once and completed later.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from lwm.api import LWM
from lwm.serve.errors import APIError, client_error
from lwm.serve.schemas import VideoGenerationRequest

logger = logging.getLogger("lwm.serve")


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

    def ready_model(self) -> LWM:
        """The loaded model, for reading its settings; a 503 while it loads or after it failed to."""
        if self.state == "loading":
            raise APIError(503, "the model is still loading; retry shortly", code="model_loading")
        if self.state != "ready":
            raise APIError(503, "the model is not available", code="model_unavailable")
        return self.model

    def submit(self, job: Callable[[LWM], Any]) -> asyncio.Future:
        """Queues `job(model)`; the future resolves with its result. Cancelling it skips a job not yet started."""
        self.ready_model()
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
                failure = client_error(error)
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
