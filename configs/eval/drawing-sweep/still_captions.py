"""Captions of held-out stills judged against the frame they describe (docs/world-dynamics.md, "Key frames"):
whether a model reads what an object's codes look like, with no video around them. `lwm eval` judges
captions of clips; this asks for the image captions the world's `image_text` examples train, and judges
them as `lwm eval` judges a caption (`judge.score_caption`, for the still's frame).

    python configs/eval/drawing-sweep/still_captions.py MODEL_DIR [--stills 30]
"""

from __future__ import annotations

import argparse

import numpy as np

from lwm import LWM, world
from lwm.eval.world import held_out_clips
from lwm.world import judge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--stills", type=int, default=30)
    args = parser.parse_args()
    model = LWM.from_pretrained(args.model)
    scores = []
    for clip in held_out_clips(args.stills):
        frame = world.still_frame(clip)
        caption = model.caption(clip.frames[frame], max_new_tokens=64)
        if not scores:
            print(f"truth:   {world.describe_frame(clip, frame)}\ncaption: {caption}")
        scores.append(judge.score_caption(caption, clip, frame))
    checks = {name: np.mean([score.checks.get(name, False) for score in scores]) for name in scores[0].checks}
    print(f"{args.stills} stills: judged correct {np.mean([score.correct for score in scores]):.0%}; "
          + ", ".join(f"{name} {share:.0%}" for name, share in checks.items()))


if __name__ == "__main__":
    main()
