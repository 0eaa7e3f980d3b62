"""`lwm tokenizer ...`: train, run and evaluate the VQGAN vision tokenizer, and train a text tokenizer.

    lwm tokenizer train DATA... -o OUT          train a VQGAN on image/video folders or JSONL manifests
    lwm tokenizer encode VIDEO -o codes.npy     frames -> codes [T, h, w]
    lwm tokenizer decode codes.npy -o out.mp4   codes -> frames (.mp4, .gif, or an image for one frame)
    lwm tokenizer eval DATA...                  PSNR, SSIM and codebook usage on held-out media
    lwm tokenizer train-text CORPUS... --vocab-size N -o DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="tokenizer_command", metavar="COMMAND", required=True)
    _configure_train(commands)
    _configure_encode(commands)
    _configure_decode(commands)
    _configure_eval(commands)
    _configure_train_text(commands)


def run(args: argparse.Namespace) -> int:
    from lwm.media import MediaError

    try:
        return args.tokenizer_run(args) or 0
    except (MediaError, ValueError, FileNotFoundError) as error:
        print(f"lwm tokenizer {args.tokenizer_command}: {error}", file=sys.stderr)
        return 1


def _add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="VQGAN folder (config.json + model.safetensors)")


def _load_model(path: str):
    from lwm.tokenizers.modeling_vqgan import VQGAN

    return VQGAN.from_pretrained(path)


# ----------------------------------------------------------------------------- train


def _configure_train(commands) -> None:
    from lwm.tokenizers.training_vqgan import TrainConfig

    defaults = TrainConfig(data=[], output_dir="")
    parser = commands.add_parser(
        "train",
        help="train a VQGAN on images and videos",
        description=(
            "Train a VQGAN on image/video folders or JSONL manifests (lines with an \"image\" or \"video\" "
            "key). L1/L2 reconstruction + quantizer losses, optional LPIPS-style perceptual loss (with weights "
            "you supply: see --perceptual-weights), optional PatchGAN hinge loss after a warm-up. "
            "Multi-GPU: `accelerate launch -m lwm.cli tokenizer train ...`."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("data", nargs="+", metavar="DATA", help="folders, .jsonl manifests or media files")
    parser.add_argument("-o", "--output-dir", required=True, help="where checkpoints, logs and the final model go")
    parser.add_argument("--model", default=defaults.model, help="VQGAN preset (configs/vqgan/) or JSON config")
    parser.add_argument("--init-from", default=None, help="fine-tune this VQGAN folder instead of a fresh model")
    parser.add_argument("--eval-data", nargs="*", default=[], help="held-out media (default: --holdout of DATA)")
    parser.add_argument("--holdout", type=float, default=defaults.holdout, help="fraction of files held out")
    parser.add_argument("--steps", type=int, default=defaults.max_steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="frames per step")
    parser.add_argument("--frames-per-clip", type=int, default=defaults.frames_per_clip, help="frames drawn per video")
    parser.add_argument("--lr", type=float, default=defaults.learning_rate, help="Adam learning rate")
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help="linear LR warm-up")
    parser.add_argument("--final-lr-fraction", type=float, default=defaults.final_lr_fraction,
                        help="the cosine schedule ends at this fraction of --lr")
    parser.add_argument("--l1-weight", type=float, default=defaults.l1_weight)
    parser.add_argument("--l2-weight", type=float, default=defaults.l2_weight)
    parser.add_argument("--perceptual-weight", type=float, default=defaults.perceptual_weight,
                        help="weight of the perceptual (LPIPS, VGG16) loss; 0: off; > 0 needs --perceptual-weights")
    parser.add_argument(
        "--perceptual-weights", default=defaults.perceptual_weights, metavar="PATH",
        help="a .safetensors or .pth state dict holding torchvision's ImageNet VGG16 `features.N.weight/bias` "
        "(vgg16-397923af.pth) and LPIPS v0.1's `lin0.model.1.weight` ... `lin4.model.1.weight` (vgg.pth of "
        "github.com/richzhang/PerceptualSimilarity); nothing is downloaded. Merge the two files with: "
        "python -c \"import torch; vgg = torch.load('vgg16-397923af.pth'); lin = torch.load('vgg.pth'); "
        "torch.save({k: v for k, v in vgg.items() if k.startswith('features.')} | "
        "{k: v for k, v in lin.items() if k.startswith('lin')}, 'lpips_vgg16.pth')\"",
    )
    parser.add_argument("--gan-weight", type=float, default=defaults.gan_weight, help="0 disables the GAN loss")
    parser.add_argument("--gan-start", type=int, default=defaults.gan_start_step, help="step the GAN loss starts")
    parser.add_argument("--log-every", type=int, default=defaults.log_every)
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every)
    parser.add_argument("--save-every", type=int, default=defaults.save_every)
    parser.add_argument("--eval-frames", type=int, default=defaults.eval_frames, help="held-out frames evaluated")
    parser.add_argument("--num-workers", type=int, default=defaults.num_workers, help="data loader workers")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output-dir")
    parser.set_defaults(tokenizer_run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from lwm.tokenizers.training_vqgan import TrainConfig, train

    config = TrainConfig(
        data=args.data, output_dir=args.output_dir, model=args.model, init_from=args.init_from,
        eval_data=args.eval_data, holdout=args.holdout, frames_per_clip=args.frames_per_clip,
        max_steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, warmup_steps=args.warmup_steps,
        final_lr_fraction=args.final_lr_fraction,
        l1_weight=args.l1_weight, l2_weight=args.l2_weight, perceptual_weight=args.perceptual_weight,
        perceptual_weights=args.perceptual_weights, gan_weight=args.gan_weight,
        gan_start_step=args.gan_start, log_every=args.log_every, eval_every=args.eval_every,
        save_every=args.save_every, eval_frames=args.eval_frames, num_workers=args.num_workers, seed=args.seed,
    )
    train(config, resume=args.resume)
    return 0


# ----------------------------------------------------------------------------- encode / decode


def _configure_encode(commands) -> None:
    parser = commands.add_parser(
        "encode", help="encode a video or image into VQGAN codes",
        description="Encode a video (or an image) into a .npy array of codes shaped [T, h, w].",
    )
    parser.add_argument("video", metavar="VIDEO", help="video or image file")
    parser.add_argument("-o", "--output", required=True, help="output .npy file")
    _add_model_argument(parser)
    parser.add_argument("--max-frames", type=int, default=None, help="keep this many frames, spread uniformly")
    parser.add_argument("--fps", type=float, default=None, help="resample to this frame rate first")
    parser.set_defaults(tokenizer_run=_run_encode)


def _run_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from lwm import media

    model = _load_model(args.model)
    frames = media.load_video(args.video, max_frames=args.max_frames, fps=args.fps)
    codes = model.encode_video(media.preprocess(frames, model.config.resolution))
    np.save(args.output, codes.numpy().astype(np.int32))
    print(f"{args.video}: {len(frames)} frames -> codes {tuple(codes.shape)} in {args.output}")
    return 0


def _configure_decode(commands) -> None:
    parser = commands.add_parser(
        "decode", help="decode VQGAN codes into a video or image",
        description="Decode a .npy array of codes ([T, h, w] or [h, w]) into frames.",
    )
    parser.add_argument("codes", metavar="CODES", help=".npy file of integer codes")
    parser.add_argument("-o", "--output", required=True, help="output .mp4/.gif, or .png/.jpg for a single frame")
    _add_model_argument(parser)
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate of the written video")
    parser.set_defaults(tokenizer_run=_run_decode)


def _run_decode(args: argparse.Namespace) -> int:
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
    parser = commands.add_parser(
        "eval", help="PSNR, SSIM and codebook usage of a VQGAN on media",
        description="Reconstruct held-out images/videos and report PSNR (dB), SSIM, codebook usage and perplexity.",
    )
    parser.add_argument("data", nargs="+", metavar="DATA", help="folders, .jsonl manifests or media files")
    _add_model_argument(parser)
    parser.add_argument("--frames", type=int, default=1024, help="at most this many frames, spread over the files")
    parser.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    parser.set_defaults(tokenizer_run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from lwm.eval.reconstruction import evaluate_reconstruction, format_metrics
    from lwm.tokenizers.training_vqgan import find_media, load_eval_frames

    model = _load_model(args.model)
    frames = load_eval_frames(find_media(args.data), model.config.resolution, args.frames)
    metrics = evaluate_reconstruction(model, frames, progress=True)
    print(format_metrics(metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


# ----------------------------------------------------------------------------- text tokenizer


def _configure_train_text(commands) -> None:
    parser = commands.add_parser(
        "train-text", help="train a LLaMA-2 style SentencePiece text tokenizer",
        description="Train a SentencePiece BPE text tokenizer (LLaMA-2 conventions) on text files, or on "
        "the texts of JSONL manifests (captions, plain texts and conversation turns; see docs/data.md).",
    )
    parser.add_argument("corpus", nargs="+", metavar="CORPUS", help="plain-text files or .jsonl manifests")
    parser.add_argument("--vocab-size", type=int, required=True, help="vocabulary size")
    parser.add_argument("-o", "--output-dir", required=True, help="output folder")
    parser.set_defaults(tokenizer_run=_run_train_text)


def _run_train_text(args: argparse.Namespace) -> int:
    import tempfile

    from lwm.tokenizers.text import train_text_tokenizer

    with tempfile.TemporaryDirectory() as work:
        corpus = [_manifest_corpus(path, Path(work)) if path.endswith(".jsonl") else path for path in args.corpus]
        tokenizer = train_text_tokenizer(corpus, args.vocab_size, args.output_dir)
    print(f"trained a text tokenizer with {len(tokenizer)} pieces in {args.output_dir}")
    return 0


def _manifest_corpus(manifest: str, work: Path) -> str:
    """A plain-text file of a manifest's texts, one per line: what the model will read and write.

    Captioned media also gets the processor's request ("Describe the video.", "Generate a video of
    ...") and every record the chat template's words, as the model sees them around the texts.
    """
    from lwm.data.manifest import read_manifest
    from lwm.tokenizers.processing_lwm import CAPTION_REQUESTS, GENERATION_REQUESTS, SYSTEM_PROMPT

    lines = []
    for record in read_manifest(manifest):
        data = record.data
        lines.append(f"{SYSTEM_PROMPT} USER: ASSISTANT: <vision> </vision>")
        lines += [data[key] for key in ("text", "caption") if key in data]
        if "caption" in data:
            kind = "image" if "image" in data else "video"
            lines += [CAPTION_REQUESTS[kind], GENERATION_REQUESTS[kind].format(data["caption"])]
        for message in data.get("messages", []):
            content = message["content"]
            parts = [content] if isinstance(content, str) else [p.get("text", "") for p in content]
            lines += [part for part in parts if part]
    corpus = work / f"{len(list(work.iterdir()))}.txt"
    corpus.write_text("\n".join(line.replace("\n", " ") for line in lines) + "\n", encoding="utf-8")
    return str(corpus)
