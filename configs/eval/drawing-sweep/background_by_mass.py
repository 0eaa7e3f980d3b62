"""An experiment on the world-dynamics candidate's drawing (docs/world-dynamics.md, "Deciding the
background by mass"): where does free-running drawing lose the objects?

    python configs/eval/drawing-sweep/background_by_mass.py probe MODEL
        Teacher-forced on 10 held-out continuations (seeds from 50000 on), at every code of the first
        predicted frame that is not plain background: the background code's probability, the true
        code's probability and rank, and how often all the other codes together outweigh the background.
    python configs/eval/drawing-sweep/background_by_mass.py draw MODEL OUT argmax|sample [lwm eval options]
        `lwm eval` with each code drawn in two decisions: background or not, by the summed probability of
        all the non-background codes (argmax, or a draw), then the likeliest code of that side. The
        model's drawing_config.json must not truncate (no top-k / top-p), so the sums see every code.

It replaces the decode loop's draw for this one run (not a library feature: it did not move the bars).
"""

import sys

import numpy as np
import torch

from lwm.api import LWM
from lwm.eval.world import WorldEvalConfig, continuation_case, held_out_clips
from lwm.generation import sampling
from lwm.generation.logits_process import FrameLayout
from lwm.model import LWMConfig
from lwm.tokenizers import LWMProcessor
from lwm.world.scene import BACKGROUND


def background_code(processor) -> int:
    plain = np.broadcast_to(np.array(BACKGROUND, np.uint8), (1, 64, 64, 3)).copy()
    return int(processor.encode_media({"type": "video", "frames": plain})[0, 0, 0])


@torch.no_grad()
def probe(model_dir: str) -> None:
    lwm = LWM.from_pretrained(model_dir)
    layout = FrameLayout.from_config(lwm.model.config, lwm.processor.codes_per_frame)
    background = background_code(lwm.processor)
    rows = []  # (P(background), P(true), rank of true, first object code of the frame, argmax is background)
    for clip in held_out_clips(10, 50000):
        context, future = continuation_case(clip, WorldEvalConfig())
        given = lwm.processor.encode_media({"type": "video", "frames": lwm.load_media(context.frames, "video")})
        truth = torch.from_numpy(lwm.processor.encode_media({"type": "video", "frames": future.frames}))
        prompt = lwm.continuation_prompt(torch.from_numpy(given))
        ids = layout.frame_ids(truth, last_delimiter=layout.eov_token_id)
        logits = lwm.model(torch.cat([prompt, ids])[None]).logits[0]
        codes = slice(layout.first_code_id, layout.first_code_id + layout.num_codes)
        probabilities = logits[len(prompt) - 1 : len(prompt) - 1 + layout.frame_length - 1, codes].float().softmax(-1)
        first = True
        for place, code in enumerate(truth[0].flatten().tolist()):
            if code != background:
                p = probabilities[place]
                rows.append((float(p[background]), float(p[code]), int((p > p[code]).sum()), first,
                             int(p.argmax()) == background))
                first = False
    table = np.array(rows)
    for name, part in (("every object code", table), ("the first object code of a frame", table[table[:, 3] == 1])):
        print(f"{name} (n = {len(part)}): P(background) median {np.median(part[:, 0]):.2f}, P(true) median "
              f"{np.median(part[:, 1]):.3f}, true code's rank median {np.median(part[:, 2]):.0f}; the argmax is the "
              f"background {np.mean(part[:, 4]) * 100:.0f}%, all the other codes together outweigh it "
              f"{np.mean(part[:, 0] < 0.5) * 100:.0f}%, the true code is the argmax {np.mean(part[:, 2] == 0) * 100:.0f}%")


def draw(model_dir: str, out: str, rule: str, eval_options: list[str]) -> int:
    from lwm.cli.main import main

    processor = LWMProcessor.from_pretrained(model_dir)  # `lwm eval` loads the model itself
    background, first_code = background_code(processor), LWMConfig.from_pretrained(model_dir).vocab_size
    num_codes = processor.vqgan.codebook_size
    spans, plain_choose, plain_span = {}, sampling.choose, sampling.allowed_span

    def allowed_span(scores):
        spans["last"] = plain_span(scores)
        return spans["last"]

    def choose(scores, do_sample, generator=None):
        start = first_code - spans["last"].start  # code 0's column in the span
        if not do_sample or start < 0 or start + num_codes > scores.shape[1]:
            return plain_choose(scores, do_sample, generator)  # text, or a delimiter's place
        p = scores[:, start : start + num_codes].float().softmax(-1)
        objects = 1 - p[:, background]
        is_background = objects < 0.5 if rule == "argmax" else torch.rand(len(p), generator=generator) >= objects
        p[:, background] = -1.0
        return torch.where(is_background, background, p.argmax(-1)) + start

    sampling.allowed_span, sampling.choose = allowed_span, choose
    return main(["eval", "--model", model_dir, "--out", out, *eval_options])


if __name__ == "__main__":
    if sys.argv[1:2] == ["probe"] and len(sys.argv) == 3:
        probe(sys.argv[2])
    elif sys.argv[1:2] == ["draw"] and len(sys.argv) >= 5 and sys.argv[4] in ("argmax", "sample"):
        sys.exit(draw(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]))
    else:
        sys.exit(__doc__)
