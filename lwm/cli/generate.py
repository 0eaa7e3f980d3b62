"""`lwm generate image|video "prompt" -o FILE`: draw from a prompt as the model draws best (its
drawing_config.json; without one, LWM's guided sampling)."""

from __future__ import annotations

import argparse
import sys

from lwm.cli.main import add_command
from lwm.cli.model_loading import add_model_arguments, load_model


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Generate an image or a video from a text prompt and save it."
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    image = add_command(kinds, "image", _run_image, help="draw an image (PNG, JPEG, ...)")
    video = add_command(kinds, "video", _run_video, help="draw a video (MP4, GIF, ...)")
    for sub, default_output in ((image, "image.png"), (video, "video.mp4")):
        sub.add_argument("prompt", help="what to draw")
        sub.add_argument("-o", "--output", default=default_output, help=f"file to write (default: {default_output})")
        sub.add_argument("--seed", type=int, default=None, help="seed for reproducible drawings")
        sub.add_argument("--guidance-scale", type=float, default=None,
                         help="classifier-free guidance of the image / first frame (default: the model's; LWM's 5)")
        sub.add_argument("--temperature", type=float, default=None,
                         help="0 = greedy (default: the model's; LWM's 1)")
        add_model_arguments(sub, reads_videos=False)
    image.add_argument("--top-k", type=int, default=None, help="0 = off (default: the model's; LWM's 8192)")
    video.add_argument("--top-k", type=int, default=None,
                       help="top-k of the frames after the first, 0 = off (default: the model's; LWM's 1000)")
    video.add_argument("--frames", type=int, default=None,
                       help="number of frames (default: the model's; LWM's 8)")
    video.add_argument("--fps", type=float, default=8.0, help="playback rate of the file (default: %(default)s)")


def _run_image(args: argparse.Namespace) -> int:
    """Draw an image from a prompt."""
    return _draw(args, lambda lwm: lwm.generate_image(
        args.prompt, guidance_scale=args.guidance_scale, top_k=args.top_k, temperature=args.temperature,
        seed=args.seed, progress=True,
    ))


def _run_video(args: argparse.Namespace) -> int:
    """Draw a video from a prompt as the model draws best (its drawing_config.json; without one, LWM's
    procedure: the first frame as an image, guided, the rest following the video prompt)."""
    return _draw(args, lambda lwm: lwm.generate_video(
        args.prompt, num_frames=args.frames, guidance_scale=args.guidance_scale, top_k=args.top_k,
        temperature=args.temperature, fps=args.fps, seed=args.seed, progress=True,
    ))


def _draw(args: argparse.Namespace, draw) -> int:
    """Loads the model, draws with `draw(lwm)` and saves to --output (a PIL image or a `Video`, both with `save`)."""
    from lwm.media import MediaError

    lwm = load_model(args)
    if lwm is None:
        return 1
    try:
        draw(lwm).save(args.output)
    except (ValueError, MediaError, OSError) as error:
        print(f"lwm generate: {error}", file=sys.stderr)
        return 1
    print(args.output)
    return 0
