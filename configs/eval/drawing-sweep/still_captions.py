"""How often a model's caption of a held-out still names each object's colour and shape (docs/world-dynamics.md,
"Key frames"): whether it reads what an object's codes look like, with no video around them. `lwm eval` judges
captions of clips; this asks for the image captions the world's `image_text` examples train.

    python configs/eval/drawing-sweep/still_captions.py MODEL_DIR [--stills 30]
"""

from __future__ import annotations

import argparse

from lwm import LWM, world
from lwm.eval.world import held_out_clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--stills", type=int, default=30)
    args = parser.parse_args()
    model = LWM.from_pretrained(args.model)
    objects = colours = shapes = 0
    for clip in held_out_clips(args.stills):
        frame = world.still_frame(clip)
        caption = model.caption(clip.frames[frame], max_new_tokens=64).lower()
        if objects == 0:
            print(f"truth:   {world.describe_frame(clip, frame)}\ncaption: {caption}")
        objects += len(clip.objects)
        colours += sum(obj.colour in caption for obj in clip.objects)
        shapes += sum(obj.shape in caption for obj in clip.objects)
    print(f"{objects} objects in {args.stills} stills: colour named {colours / objects:.0%}, shape named {shapes / objects:.0%}")


if __name__ == "__main__":
    main()
