"""Is text -> image hard because of *where* an object starts (the decision the raster order hides) or *how*
its codes look? (docs/world-dynamics.md, "Where or how: text -> image with the positions given"). Writes
two text -> image manifests over the same stills, prompts naming each object's region (R) or its region
and exact centre in pixels (P); after an equal-compute decoder is trained on each, judges 50 held-out
stills drawn from the arm's own prompts (judged against the region prompt, as `lwm eval` does).

    python configs/eval/drawing-sweep/t2i_positions.py data WORLD_DIR OUT_DIR [--clips 12000]
    python configs/eval/drawing-sweep/t2i_positions.py judge MODEL_DIR {R,P} [--clips 50]

WORLD_DIR is a `lwm data world` folder of training clips (its images/ are the stills); OUT_DIR gets R.jsonl
and P.jsonl.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lwm import world
from lwm.eval.world import score_drawing


def write_manifests(world_dir: Path, out_dir: Path, clips: int) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "R.jsonl", "w") as regions, open(out_dir / "P.jsonl", "w") as centres:
        for seed in world.split_seeds("train", clips):
            clip = world.generate_clip(seed)
            frame = world.still_frame(clip)
            image = str((world_dir / "images" / f"{seed:07d}.png").resolve())
            for sink, with_centres in ((regions, False), (centres, True)):
                record = {"image": image, "caption": world.describe_frame(clip, frame, with_centres),
                          "task": "image_text", "direction": "generation"}
                sink.write(json.dumps(record) + "\n")


def judge(model: str, arm: str, clips: int) -> dict:
    from lwm import LWM

    lwm = LWM.from_pretrained(model)
    checks: dict[str, list[bool]] = {}
    correct = 0
    for seed in world.split_seeds("held_out", clips):
        clip = world.generate_clip(seed)
        frame = world.still_frame(clip)
        prompt = world.image_prompt_for(clip, frame, centres=arm == "P")
        image = np.asarray(lwm.generate_image(prompt, seed=seed))
        score = score_drawing(image, world.image_prompt_for(clip, frame), clip.frame_size)
        correct += score.correct
        for name, ok in score.checks.items():
            checks.setdefault(name, []).append(ok)
    return {"arm": arm, "model": model, "clips": clips, "correct": correct / clips,
            **{name: float(np.mean(oks)) for name, oks in checks.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data")
    data.add_argument("world_dir", type=Path)
    data.add_argument("out_dir", type=Path)
    data.add_argument("--clips", type=int, default=12000)
    judged = commands.add_parser("judge")
    judged.add_argument("model")
    judged.add_argument("arm", choices=["R", "P"])
    judged.add_argument("--clips", type=int, default=50)
    args = parser.parse_args()
    if args.command == "data":
        write_manifests(args.world_dir, args.out_dir, args.clips)
    else:
        print(json.dumps(judge(args.model, args.arm, args.clips)))


if __name__ == "__main__":
    main()
