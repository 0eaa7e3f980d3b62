"""`lwm serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over one model."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys

from lwm.cli.model_loading import add_model_arguments

MIB = 1 << 20


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve a model over an OpenAI-compatible API: /v1/chat/completions (images and videos as data: URLs, "
        "or file:// URLs under --allowed-media-dir), /v1/images/generations, /v1/videos/generations, "
        "/v1/models, /health and /metrics. Requests run one at a time, in arrival order. An input video is "
        "read as --max-frames frames (default: the model's), whatever the request."
    )
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-name", default="lwm", help="the model id reported by /v1/models")
    parser.add_argument("--api-key", default=os.environ.get("LWM_API_KEY"),
                        help="require 'Authorization: Bearer KEY' (default: $LWM_API_KEY, or none)")
    parser.add_argument("--allowed-media-dir", default=None, metavar="DIR",
                        help="allow file:// media URLs for files inside DIR (default: refused)")
    parser.add_argument("--allowed-media-domain", action="append", default=[], metavar="HOST",
                        help="allow http(s) media URLs from HOST (repeatable; default: none; "
                        "redirects are not followed)")
    parser.add_argument("--max-body-mb", type=float, default=64, help="largest request body")
    parser.add_argument("--max-media-mb", type=float, default=32, help="largest image or video in a request")
    parser.add_argument("--max-media-per-request", type=int, default=8)
    parser.add_argument("--max-output-frames", type=int, default=16, help="most frames a video generation may ask for")
    parser.add_argument("--max-queue", type=int, default=64, help="requests that may wait for the model")
    parser.add_argument("--shutdown-timeout", type=float, default=30,
                        help="seconds to let running requests finish on shutdown")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from lwm.api import LWM, model_folder
    from lwm.serve import MediaPolicy, ServerConfig, create_app

    try:
        model_folder(args.model)  # fail now, not in the worker, when there is no model
        policy = MediaPolicy(
            allowed_dir=args.allowed_media_dir,
            allowed_domains=frozenset(args.allowed_media_domain),
            max_bytes=int(args.max_media_mb * MIB),
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"lwm serve: {error}", file=sys.stderr)
        return 2
    config = ServerConfig(
        model_name=args.model_name,
        api_key=args.api_key or None,
        media=policy,
        max_body_bytes=int(args.max_body_mb * MIB),
        max_media_per_request=args.max_media_per_request,
        max_output_frames=args.max_output_frames,
        max_queue=args.max_queue,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.api_key is None and not _is_loopback(args.host):
        logging.getLogger("lwm.serve").warning("listening on %s without --api-key: anyone who can reach it may use it",
                                               args.host)

    def load_model() -> LWM:
        return LWM.from_pretrained(args.model, device=args.device, dtype=args.dtype, max_frames=args.max_frames,
                                   device_map=args.device_map, offload_folder=args.offload_folder)

    app = create_app(load_model, config)
    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=args.shutdown_timeout,
                log_level="info")
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
