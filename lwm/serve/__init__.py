"""Serving a model: the chat REPL (`lwm chat`) and the OpenAI-compatible HTTP server (`lwm serve`).

    chat.py, preview.py   the REPL and its terminal thumbnails
    app.py                the FastAPI app: thin routes over handlers.py
    schemas.py, handlers.py, worker.py, errors.py, media_fetch.py   the server's parts

Names are imported on first use: the server needs the `serve` extra (FastAPI), the REPL does not.
"""

from importlib import import_module

_PUBLIC = {
    "ChatRepl": "lwm.serve.chat",
    "ChatSettings": "lwm.serve.chat",
    "MediaFetchError": "lwm.serve.media_fetch",
    "MediaPolicy": "lwm.serve.media_fetch",
    "fetch_media": "lwm.serve.media_fetch",
    "ServerConfig": "lwm.serve.schemas",
    "APIError": "lwm.serve.errors",
    "ModelWorker": "lwm.serve.worker",
    "Handlers": "lwm.serve.handlers",
    "create_app": "lwm.serve.app",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'lwm.serve' has no attribute {name!r}")
    return getattr(import_module(_PUBLIC[name]), name)
