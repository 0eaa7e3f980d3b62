"""Drawing speed: frames per second of LWM's `generate_video` / `continue_video` vs transformers' `generate()`.

    .venv/bin/python benchmarks/drawing.py                        # CPU, 1 thread: ~4 min on a busy 2-core machine
    .venv/bin/python benchmarks/drawing.py --models lwm-7b-vocab --frames 1 --repeats 3

Two models: the bundled one (lwm/bundled, loaded with `LWM.from_pretrained`; 768 + 1032 ids, 16 x 16
codes a frame) and one shaped like LWM-7B's vocabularies (32000 text + 8448 vision ids, 16 x 16 codes a
frame) with random weights and a small trunk (`--hidden`, `--layers`). Each draws `--frames` frames
after a text prompt, sampling with LWM's video settings (top-k 1000, temperature 1). Rows:

- `transformers generate() + frame processor`: the same model through transformers' `generate()`
  with `FrameStructureLogitsProcessor` (the peer: every step computes both heads);
- `lwm generate_video`: `lwm.generation.vision.generate_video`, unguided;
- `lwm generate_video, first frame s=5`: the first frame guided as LWM draws images (s = 5, top-k 8192);
- `lwm continue_video`: the frames after one given frame.

Rounds are interleaved (one call of each row per round) and each cell is the median over `--repeats`
rounds after one warm-up round. To compare with an older checkout of the project, run this file with
`PYTHONPATH` pointing at that checkout: the rows call only the functions named above.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table  # noqa: E402

from lwm.api import LWM  # noqa: E402
from lwm.generation.logits_process import FrameLayout, FrameStructureLogitsProcessor  # noqa: E402
from lwm.generation.sampling import SamplingConfig  # noqa: E402
from lwm.generation.vision import IMAGE_SAMPLING, VIDEO_SAMPLING, continue_video, generate_video  # noqa: E402
from lwm.model import LWMConfig, LWMForCausalLM  # noqa: E402

FRAME = (16, 16)  # LWM's 256 codes a frame; the bundled VQGAN's grid is the same
TEXT_VOCAB, VISION_VOCAB, CODES = 32000, 8448, 8192
UNCONDITIONAL_PROMPT = torch.tensor([1, 529, 4924, 29958])  # "<s><vision>" in LLaMA-2 ids


def bundled():
    lwm = LWM.from_pretrained("bundled", dtype="float32")
    prompt = lwm.processor.generation_prompt("a red ball moves to the left", "video")["input_ids"]
    unconditional = lwm.processor.unconditional_prompt()["input_ids"]
    if lwm.processor.vqgan.grid_size != FRAME[0]:
        raise RuntimeError(f"the bundled VQGAN's grid is {lwm.processor.vqgan.grid_size}, expected {FRAME[0]}")
    return lwm.model.eval(), prompt, unconditional


def lwm_7b_vocabulary(args):
    config = LWMConfig(
        vocab_size=TEXT_VOCAB, vision_vocab_size=VISION_VOCAB, num_vision_codes=CODES, hidden_size=args.hidden,
        intermediate_size=int(args.hidden * 2.6875) // 64 * 64, num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 64, max_position_embeddings=4096,
        tie_word_embeddings=False, attn_implementation="sdpa", bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    torch.manual_seed(0)
    prompt = torch.randint(3, TEXT_VOCAB, (32,), generator=torch.Generator().manual_seed(0))
    return LWMForCausalLM(config).eval(), prompt, UNCONDITIONAL_PROMPT


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def rows(model, prompt, unconditional, frames: int) -> dict:
    layout = FrameLayout.from_config(model.config, FRAME[0] * FRAME[1])
    model.generation_config.eos_token_id = None  # exactly the frames' ids
    given = torch.randint(0, layout.num_codes, (1, *FRAME), generator=seeded())
    first_guided = SamplingConfig(temperature=1.0, top_k=IMAGE_SAMPLING.top_k, guidance_scale=IMAGE_SAMPLING.guidance_scale)

    def transformers_generate():
        structure = FrameStructureLogitsProcessor(layout, frames, len(prompt))
        torch.manual_seed(0)
        model.generate(prompt[None], logits_processor=[structure], max_new_tokens=frames * layout.frame_length,
                       do_sample=True, top_k=VIDEO_SAMPLING.top_k, temperature=1.0, pad_token_id=0)

    return {
        "transformers generate() + frame processor": transformers_generate,
        "lwm generate_video": lambda: generate_video(
            model, prompt, None, num_frames=frames, frame_shape=FRAME, first_frame_sampling=VIDEO_SAMPLING,
            sampling=VIDEO_SAMPLING, generator=seeded()),
        "lwm generate_video, first frame s=5": lambda: generate_video(
            model, prompt, unconditional, num_frames=frames, frame_shape=FRAME, first_frame_sampling=first_guided,
            sampling=VIDEO_SAMPLING, generator=seeded()),
        "lwm continue_video": lambda: continue_video(
            model, prompt, given, num_frames=frames, sampling=VIDEO_SAMPLING, generator=seeded()),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["bundled", "lwm-7b-vocab"], choices=["bundled", "lwm-7b-vocab"])
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256, help="trunk width of the LWM-7B-vocabulary model")
    parser.add_argument("--layers", type=int, default=4, help="trunk layers of the LWM-7B-vocabulary model")
    parser.add_argument("--repeats", type=int, default=3, help="measured rounds (medians); one warm-up round more")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: stable on shared machines)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# drawing {args.frames} frame(s) of {FRAME[0]}x{FRAME[1]} codes, fp32; {machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); medians of {args.repeats} interleaved rounds")
    for name in args.models:
        model, prompt, unconditional = bundled() if name == "bundled" else lwm_7b_vocabulary(args)
        config = model.config
        variants = rows(model, prompt, unconditional, args.frames)
        seconds = {row: [] for row in variants}
        for round_index in range(args.repeats + 1):
            for row, draw in variants.items():
                start = time.perf_counter()
                draw()
                if round_index:  # round 0 warms up
                    seconds[row].append(time.perf_counter() - start)
        print(f"\n## {name}: hidden {config.hidden_size}, {config.num_hidden_layers} layers, vocabulary "
              f"{config.vocab_size} + {config.vision_vocab_size}, prompt {len(prompt)} ids")
        reference = statistics.median(seconds["transformers generate() + frame processor"])
        table = []
        for row, times in seconds.items():
            median = statistics.median(times)
            table.append([row, f"{args.frames / median:.3f}", f"{median * 1e3 / (args.frames * (FRAME[0] * FRAME[1] + 1)):.1f}",
                          f"{reference / median:.2f}x"])
        print_table(["drawer", "frames/s", "ms per id", "speed vs transformers"], table, flush=True)


if __name__ == "__main__":
    main()
