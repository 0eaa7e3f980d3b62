"""`lwm tokenizer ...`: train, run and evaluate the VQGAN vision tokenizer, and train a text tokenizer.

    lwm tokenizer train CONFIG [key=value ...]  train a VQGAN (a YAML config, as `lwm train`'s)
    lwm tokenizer encode VIDEO -o codes.npy     frames -> codes [T, h, w]
    lwm tokenizer decode codes.npy -o out.mp4   codes -> frames (.mp4, .gif, or an image for one frame)
    lwm tokenizer eval DATA...                  PSNR, SSIM and codebook usage on held-out media
    lwm tokenizer train-text CORPUS... --vocab-size N -o DIR
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from lwm.cli.main import add_command


def configure(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="tokenizer_command", metavar="COMMAND", required=True)
    _configure_train(commands)
    _configure_encode(commands)
    _configure_decode(commands)
    _configure_eval(commands)
    _configure_train_text(commands)


def _reported(run):
    """`run` with the bad input it meets (media, values, missing files) reported as `lwm tokenizer ...: why`."""

    @functools.wraps(run)
    def reported(args: argparse.Namespace) -> int:
        from lwm.media import MediaError

        try:
            return run(args) or 0
        except (MediaError, ValueError, FileNotFoundError) as error:
            print(f"lwm tokenizer {args.tokenizer_command}: {error}", file=sys.stderr)
            return 1

    return reported


def _add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="VQGAN folder (config.json + model.safetensors)")


def _load_model(path: str):
    from lwm.tokenizers import VQGAN

    return VQGAN.from_pretrained(path)


# ----------------------------------------------------------------------------- train


def _configure_train(commands) -> None:
    parser = add_command(commands, "train", _reported(_run_train), help="train a VQGAN on images and videos from a YAML config")
    parser.add_argument("config", help="VQGAN training config (YAML), e.g. configs/train/bundled-vqgan.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="overrides of config settings, e.g. max_steps=100 data=[clips/] output_dir=out")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")


def _run_train(args: argparse.Namespace) -> int:
    """Train a VQGAN on image/video folders or JSONL manifests (lines with an "image" or "video" key): L1/L2
    reconstruction + quantizer losses, optional LPIPS-style perceptual loss (with weights you supply),
    optional PatchGAN hinge loss after a warm-up. The settings are the fields of
    lwm.training.vqgan.VQGANTrainConfig, e.g. configs/train/bundled-vqgan.yaml. Multi-GPU:
    `accelerate launch -m lwm tokenizer train CONFIG ...`."""
    from lwm.training import load_vqgan_config, train_vqgan

    train_vqgan(load_vqgan_config(args.config, args.overrides), resume=args.resume)
    return 0


# ----------------------------------------------------------------------------- encode / decode


def _configure_encode(commands) -> None:
    parser = add_command(commands, "encode", _reported(_run_encode), help="encode a video or image into VQGAN codes")
    parser.add_argument("video", metavar="VIDEO", help="video or image file")
    parser.add_argument("-o", "--output", required=True, help="output .npy file")
    _add_model_argument(parser)
    parser.add_argument("--max-frames", type=int, default=None, help="keep this many frames, spread uniformly")
    parser.add_argument("--fps", type=float, default=None, help="resample to this frame rate first")


def _run_encode(args: argparse.Namespace) -> int:
    """Encode a video (or an image) into a .npy array of codes shaped [T, h, w]."""
    import numpy as np

    from lwm import media

    model = _load_model(args.model)
    frames = media.load_video(args.video, max_frames=args.max_frames, fps=args.fps)
    codes = model.encode_video(media.preprocess(frames, model.config.resolution))
    np.save(args.output, codes.numpy().astype(np.int32))
    print(f"{args.video}: {len(frames)} frames -> codes {tuple(codes.shape)} in {args.output}")
    return 0


def _configure_decode(commands) -> None:
    parser = add_command(commands, "decode", _reported(_run_decode), help="decode VQGAN codes into a video or image")
    parser.add_argument("codes", metavar="CODES", help=".npy file of integer codes")
    parser.add_argument("-o", "--output", required=True, help="output .mp4/.gif, or .png/.jpg for a single frame")
    _add_model_argument(parser)
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate of the written video")


def _run_decode(args: argparse.Namespace) -> int:
    """Decode a .npy array of codes ([T, h, w] or [h, w]) into frames."""
    import numpy as np
    import torch

    from lwm import media

    try:
        codes = np.load(args.codes, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{args.codes}: not a readable .npy array ({error})") from None
    if not np.issubdtype(codes.dtype, np.integer) or codes.ndim not in (2, 3):
        raise ValueError(f"{args.codes}: expected integer codes shaped [T, h, w] or [h, w], got {codes.dtype} {codes.shape}")
    model = _load_model(args.model)
    frames = media.to_uint8(model.decode_video(torch.from_numpy(codes.reshape(-1, *codes.shape[-2:])).long()))
    if Path(args.output).suffix.lower() in media.IMAGE_SUFFIXES - {".gif"}:
        if len(frames) != 1:
            raise ValueError(f"{args.output}: an image holds one frame; the codes hold {len(frames)} (use .mp4 or .gif)")
        media.save_image(frames[0], args.output)
    else:
        media.save_video(frames, args.output, fps=args.fps)
    print(f"{args.codes}: codes {codes.shape} -> {len(frames)} frames of {frames.shape[2]}x{frames.shape[1]} in {args.output}")
    return 0


# ----------------------------------------------------------------------------- eval


def _configure_eval(commands) -> None:
    parser = add_command(commands, "eval", _reported(_run_eval), help="PSNR, SSIM and codebook usage of a VQGAN on media")
    parser.add_argument("data", nargs="+", metavar="DATA", help="folders, .jsonl manifests or media files")
    _add_model_argument(parser)
    parser.add_argument("--frames", type=int, default=1024, help="at most this many frames, spread over the files")
    parser.add_argument("--json", default=None, help="also write the metrics to this JSON file")


def _run_eval(args: argparse.Namespace) -> int:
    """Reconstruct held-out images/videos and report PSNR (dB), SSIM, codebook usage and perplexity."""
    from lwm.eval.reconstruction import evaluate_reconstruction, format_metrics
    from lwm.training import find_media, load_eval_frames

    model = _load_model(args.model)
    frames = load_eval_frames(find_media(args.data), model.config.resolution, args.frames)
    metrics = evaluate_reconstruction(model, frames, progress=True)
    print(format_metrics(metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


# ----------------------------------------------------------------------------- text tokenizer


def _configure_train_text(commands) -> None:
    parser = add_command(commands, "train-text", _reported(_run_train_text),
                         help="train a LLaMA-2 style SentencePiece text tokenizer")
    parser.add_argument("corpus", nargs="+", metavar="CORPUS", help="plain-text files or .jsonl manifests")
    parser.add_argument("--vocab-size", type=int, required=True, help="vocabulary size")
    parser.add_argument("-o", "--output-dir", required=True, help="output folder")


def _run_train_text(args: argparse.Namespace) -> int:
    """Train a SentencePiece BPE text tokenizer (LLaMA-2 conventions) on text files, or on the texts of JSONL
    manifests (captions, plain texts and conversation turns; see docs/data.md)."""
    import tempfile

    from lwm.data import manifest_texts
    from lwm.tokenizers import train_text_tokenizer

    with tempfile.TemporaryDirectory() as work:
        corpus = []
        for index, path in enumerate(args.corpus):
            if path.endswith(".jsonl"):  # what the model will read and write, one text a line
                lines = (text.replace("\n", " ") for text in manifest_texts(path))
                path = Path(work) / f"{index}.txt"
                path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            corpus.append(str(path))
        tokenizer = train_text_tokenizer(corpus, args.vocab_size, args.output_dir)
    print(f"trained a text tokenizer with {len(tokenizer)} pieces in {args.output_dir}")
    return 0
