"""Decoding speed: LWM with its KV cache vs transformers' LlamaForCausalLM.generate of the same size.

    .venv/bin/python benchmarks/generate.py                     # CPU, 1 thread: ~1.5 min on a busy 2-core machine
    .venv/bin/python benchmarks/generate.py --device cuda --dtype bfloat16 --hidden-size 4096 \\
        --layers 32 --heads 32 --intermediate-size 11008 --prompt-length 512 --new-tokens 257

Every run is greedy and produces exactly `--new-tokens` ids after a `--prompt-length` prompt, with
random weights. Rows:

- `llama generate()`: `LlamaForCausalLM` with the same trunk and one head as wide as LWM's text +
  vision heads together (the reference);
- `lwm generate()`: `LWMForCausalLM` through transformers' `generate()`;
- `lwm sample()`: LWM's own decode loop (`lwm.generation.sampling`), unguided;
- `lwm sample() + text only`: the same loop with `TextOnlyLogitsProcessor`, as chat and captions
  decode (only the text head runs);
- `lwm sample() + frames`: the same loop with the frame structure processor (only the vision head runs);
- `lwm sample() CFG s=5`: the same loop with classifier-free guidance (conditional and
  unconditional rows in one forward, LWM's 4-token unconditional prompt `<s><vision>`).

Time to first token (TTFT) is prefill + the first chosen id; decode tokens/s counts the ids after
the first over the time after it, per sequence. CPU runs use one thread unless `--threads` says
otherwise: on a shared 2-core machine torch's default of 2 threads made every number several times
slower and far noisier. Runs are interleaved round by round and each cell is the median over
`--repeats` rounds (one warm-up round is not counted).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.generation.streamers import BaseStreamer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table  # noqa: E402

from lwm.generation.logits_process import (  # noqa: E402
    FrameLayout,
    FrameStructureLogitsProcessor,
    TextOnlyLogitsProcessor,
)
from lwm.generation.sampling import SamplingConfig, iter_tokens  # noqa: E402
from lwm.model import LWMConfig, LWMForCausalLM  # noqa: E402

TEXT_VOCAB, VISION_VOCAB, CODES = 32000, 8448, 8192  # LWM's vocabularies: the heads cost what they cost in LWM
# "<s><vision>" in LLaMA-2 ids (docs/official-weights.md#prompts-and-bos)
UNCONDITIONAL_PROMPT = torch.tensor([1, 529, 4924, 29958])


class TokenClock(BaseStreamer):
    """Records when `generate()` hands over each new id (its first `put` is the prompt)."""

    def __init__(self):
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, value):
        if self.prompt_seen:
            self.times.append(time.perf_counter())
        self.prompt_seen = True

    def end(self):
        pass


def hf_generate(model, prompt, new_tokens) -> list[float]:
    clock = TokenClock()
    model.generate(
        prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, streamer=clock, pad_token_id=0
    )
    return clock.times


def lwm_sample(model, prompt, new_tokens, guided: bool, constraint: str | None = None) -> list[float]:
    sampling = SamplingConfig(do_sample=False, guidance_scale=5.0 if guided else 1.0)
    kwargs = {"schedule": [(new_tokens, sampling)]}
    if guided:
        kwargs["unconditional_ids"] = UNCONDITIONAL_PROMPT.to(prompt.device)
    if constraint == "frames":
        layout = FrameLayout.from_config(model.config, codes_per_frame=256)
        kwargs["processors"] = [FrameStructureLogitsProcessor(layout, num_frames=1_000_000, vision_start=prompt.shape[1])]
    elif constraint == "text":
        kwargs["processors"] = [TextOnlyLogitsProcessor(model.config.vocab_size)]
    times = []
    for token in iter_tokens(model, prompt, **kwargs):
        token.cpu()  # waits for the device, as generate()'s streamer does
        times.append(time.perf_counter())
    return times


def build_models(args):
    shape = dict(
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=args.prompt_length + args.new_tokens + 8,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    dtype = getattr(torch, args.dtype)
    configs = (
        LWMConfig(vocab_size=TEXT_VOCAB, vision_vocab_size=VISION_VOCAB, num_vision_codes=CODES, **shape),
        LlamaConfig(vocab_size=TEXT_VOCAB + VISION_VOCAB, **shape),
    )
    models = []
    for config, model_class in zip(configs, (LWMForCausalLM, LlamaForCausalLM)):
        torch.manual_seed(0)
        with torch.device(args.device):  # built where it runs: a 7B model never passes through host memory
            model = model_class(config).to(dtype).eval()
        model.generation_config.eos_token_id = None  # always exactly --new-tokens ids
        models.append(model)
    return models


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--intermediate-size", type=int, default=688)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds (medians); one warm-up round more")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads; 0 = torch's choice (oversubscribes a shared machine)"
    )
    args = parser.parse_args(argv)
    if args.new_tokens < 2 or args.prompt_length < 1 or args.repeats < 1:
        parser.error("--new-tokens must be at least 2, --prompt-length and --repeats at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    lwm, llama = build_models(args)
    prompt = torch.randint(3, TEXT_VOCAB, (1, args.prompt_length), generator=torch.Generator().manual_seed(0))
    prompt = prompt.to(args.device)
    variants = {
        "llama generate()": lambda: hf_generate(llama, prompt, args.new_tokens),
        "lwm generate()": lambda: hf_generate(lwm, prompt, args.new_tokens),
        "lwm sample()": lambda: lwm_sample(lwm, prompt, args.new_tokens, guided=False),
        "lwm sample() + text only": lambda: lwm_sample(lwm, prompt, args.new_tokens, guided=False, constraint="text"),
        "lwm sample() + frames": lambda: lwm_sample(lwm, prompt, args.new_tokens, guided=False, constraint="frames"),
        "lwm sample() CFG s=5": lambda: lwm_sample(lwm, prompt, args.new_tokens, guided=True),
    }
    ttft = {name: [] for name in variants}
    decode = {name: [] for name in variants}
    for round_index in range(args.repeats + 1):
        for name, run in variants.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            times = run()
            if len(times) != args.new_tokens:
                raise RuntimeError(f"{name} produced {len(times)} ids, expected {args.new_tokens}")
            if round_index:  # round 0 warms up
                ttft[name].append(times[0] - start)
                decode[name].append((len(times) - 1) / (times[-1] - times[0]))

    print(
        f"{machine()}, torch {torch.__version__}, {args.device} {args.dtype}, threads {torch.get_num_threads()}; "
        f"hidden {args.hidden_size}, layers {args.layers}, heads {args.heads}, vocab {TEXT_VOCAB}+{VISION_VOCAB}; "
        f"prompt {args.prompt_length}, new tokens {args.new_tokens}, medians of {args.repeats} interleaved rounds"
    )
    reference = "llama generate()"
    reference_ttft, reference_rate = statistics.median(ttft[reference]), statistics.median(decode[reference])
    rows = []
    for name in variants:
        first, rate = statistics.median(ttft[name]), statistics.median(decode[name])
        rows.append(
            [name, f"{first * 1e3:.1f}", f"{first / reference_ttft:.2f}", f"{rate:.1f}", f"{rate / reference_rate:.2f}"]
        )
    print_table(["decoder", "TTFT ms", "TTFT / llama", "decode tok/s", "tok/s / llama"], rows)
    unguided = statistics.median(decode["lwm sample()"])
    for name, what in (("lwm sample() CFG s=5", "CFG (batch 2 vs 1)"), ("lwm sample() + frames", "frame structure")):
        print(f"{what}: {unguided / statistics.median(decode[name]):.2f}x the time per decoded token of plain sample()")


if __name__ == "__main__":
    main()
