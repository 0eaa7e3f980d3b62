"""How a VQGAN's codes change from frame to frame, told per frame and with motion codes (docs/world-dynamics.md,
"Motion codes" and "Key frames"): PSNR, the share of later patches told as motion, how many tokens change
per frame, and whether the world's judge still reads each clip's first frame from its codes (the static
facts a reader of the clip has to find there), on held-out world clips. The VQGAN's own motion settings are
replaced by the options'.

    python configs/eval/drawing-sweep/motion_codes.py VQGAN_DIR [--clips 20] [--max-shift 3] [--key-interval 0]
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from lwm import media
from lwm.eval.world import score_drawing
from lwm.tokenizers.modeling_vqgan import VQGAN
from lwm.world import image_prompt_for, scene


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vqgan")
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--max-shift", type=int, default=3)
    parser.add_argument("--key-interval", type=int, default=0, help="a key frame every this many frames (0: none)")
    args = parser.parse_args()
    trained = VQGAN.from_pretrained(args.vqgan)

    def told_as(**motion_settings) -> VQGAN:
        model = VQGAN(dataclasses.replace(trained.config, **motion_settings)).eval()
        model.load_state_dict(trained.state_dict())
        return model

    per_frame = told_as(motion_max_shift=0, motion_key_interval=0)
    motion = told_as(motion_max_shift=args.max_shift, motion_key_interval=args.key_interval)
    rows = []
    for seed in scene.split_seeds("held_out", args.clips):
        clip = scene.generate_clip(seed)
        pixels = media.preprocess(clip.frames, per_frame.config.resolution)
        codes, tokens = per_frame.encode_video(pixels), motion.encode_video(pixels)
        told = media.to_uint8(motion.decode_video(tokens))
        alone = media.to_uint8(per_frame.decode_video(codes))
        moved = tokens[1:] >= motion.codebook_size
        first_frame = score_drawing(told[0], image_prompt_for(clip, 0), clip.frame_size)
        rows.append({
            "PSNR, codes per frame": np.mean([psnr(a, b) for a, b in zip(clip.frames, alone)]),
            "PSNR, motion codes": np.mean([psnr(a, b) for a, b in zip(clip.frames, told)]),
            "PSNR, motion codes, last frame": psnr(clip.frames[-1], told[-1]),
            "later patches told as motion": moved.float().mean().item(),
            "... and moving (not still)": (moved & (tokens[1:] != motion.codebook_size)).float().mean().item(),
            "tokens equal one frame before, codes per frame": (codes[2:] == codes[1:-1]).float().mean().item(),
            "tokens equal one frame before, motion codes": (tokens[2:] == tokens[1:-1]).float().mean().item(),
            "tokens changed per frame, codes per frame": (codes[2:] != codes[1:-1]).sum().item() / (len(codes) - 2),
            "tokens changed per frame, motion codes": (tokens[2:] != tokens[1:-1]).sum().item() / (len(codes) - 2),
            "first frame decoded, judged correct": float(first_frame.correct),
            **{f"... its {check} right": float(right) for check, right in first_frame.checks.items()},
        })
    for key in rows[0]:
        print(f"{key:50s} {np.mean([row[key] for row in rows]):.4f}")


if __name__ == "__main__":
    main()
