"""Training-step throughput: LWMForCausalLM vs transformers LlamaForCausalLM of the same size.

    .venv/bin/python benchmarks/train_step.py
    .venv/bin/python benchmarks/train_step.py --hidden 512 --layers 8 --seq 1024 --batch 2
    .venv/bin/python benchmarks/train_step.py --documents 4       # packed rows, as `lwm train` feeds them

Both models get the same trunk and the same token batch; the Llama head is as wide as LWM's text and
vision heads together (32000 + 8448), so both do the same work. They run forward + backward + AdamW
step in this process, one step each per round, and report median tokens/s. MFU is achieved model
FLOPs (6 · non-embedding params per token plus causal attention within each document) over this
machine's measured fp32 GEMM peak (median of square matmuls) at the same thread count.

With --documents N every row packs N documents of equal length: LWM gets them as `segment_ids`, the
transformers Llama as the equivalent boolean 4-D mask (what SDPA needs for packing).

Peak memory: each model also runs two steps alone in a fresh process; the number is that process's
peak resident size minus its size before the first step (the model and the batch built), so it counts
activations, logits, gradients and AdamW's state.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_seconds, peak_bytes, print_table, resident_bytes, run_worker  # noqa: E402

from lwm.model import LWMConfig, LWMForCausalLM  # noqa: E402

LLAMA = "transformers LlamaForCausalLM (sdpa)"


def gemm_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / median_seconds(lambda: a @ b, repeats)


def step_flops(model, config, batch: int, seq: int, documents: int) -> float:
    params = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name)
    # causal: half of 4·L²·d for each of a row's documents of length L = seq / documents
    attention = 2 * config.num_hidden_layers * seq * seq // documents * config.hidden_size
    return 3 * (2 * params * batch * seq + attention * batch)


def train_step(model, ids, inputs: dict):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = model(ids, labels=ids, **inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def interleaved_medians(steps: dict, repeats: int) -> dict:
    """One step of each model per round, so machine noise hits all of them alike."""
    times = {name: [] for name in steps}
    for step in steps.values():
        step()  # warm-up
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(median_seconds(step, 1, warmup=0))
    return {name: statistics.median(values) for name, values in times.items()}


def build_models(args) -> dict:
    """Model constructors by row name (a worker builds only its own)."""
    shape = dict(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=int(args.hidden * 2.6875) // 64 * 64,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=args.seq, tie_word_embeddings=False,
    )
    return {
        LLAMA: lambda: LlamaForCausalLM(
            LlamaConfig(**{**shape, "vocab_size": args.vocab + 8448}, attn_implementation="sdpa")
        ),
        "LWMForCausalLM (sdpa)": lambda: LWMForCausalLM(
            LWMConfig(**shape, vision_vocab_size=8448, num_vision_codes=8192, attn_implementation="sdpa")
        ),
        "LWMForCausalLM (blockwise)": lambda: LWMForCausalLM(
            LWMConfig(**shape, vision_vocab_size=8448, num_vision_codes=8192, attn_implementation="blockwise",
                      attn_q_chunk=512, attn_kv_chunk=512)
        ),
    }


def batch_inputs(args, names) -> tuple[torch.Tensor, dict]:
    """The token batch and each model's extra inputs (packed rows: LWM's segment_ids, Llama's 4-D mask)."""
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    inputs = {name: {} for name in names}
    if args.documents > 1:
        segments = torch.arange(args.seq).div(args.seq // args.documents, rounding_mode="floor").expand(args.batch, -1)
        same_document = segments[:, None, :, None] == segments[:, None, None, :]
        positions = torch.arange(args.seq) % (args.seq // args.documents)
        inputs = {name: {"segment_ids": segments} for name in names}
        if LLAMA in names:
            inputs[LLAMA] = {
                "attention_mask": same_document & torch.ones(args.seq, args.seq, dtype=torch.bool).tril(),
                "position_ids": positions.expand(args.batch, -1),
            }
    return ids, inputs


def memory_worker(args, name: str) -> dict:
    """Two train steps of one model in this (fresh) process: its peak resident growth over the step."""
    torch.manual_seed(0)
    model = build_models(args)[name]().train()
    ids, inputs = batch_inputs(args, [name])
    step = train_step(model, ids, inputs[name])
    before = resident_bytes()
    step()
    step()
    return {"step_peak_bytes": peak_bytes() - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable on shared machines)")
    parser.add_argument("--documents", type=int, default=1, help="documents packed in each row (default 1)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seq % args.documents:
        parser.error(f"--seq {args.seq} is not a multiple of --documents {args.documents}")
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(memory_worker(args, args.worker)))
        return

    torch.manual_seed(0)
    models = {name: build() for name, build in build_models(args).items()}
    ids, inputs = batch_inputs(args, list(models))
    peak = gemm_peak_flops()
    print(f"# train step fwd+bwd+AdamW, fp32, hidden {args.hidden}, {args.layers} layers, seq {args.seq}, batch "
          f"{args.batch}, {args.documents} document(s) per row; {machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; fp32 GEMM peak {peak / 1e9:.1f} GFLOP/s")
    steps = {name: train_step(model.train(), ids, inputs[name]) for name, model in models.items()}
    seconds_by_model = interleaved_medians(steps, args.repeats)
    memory = {name: run_worker(__file__, name, *sys.argv[1:]).get("step_peak_bytes") for name in models}
    rows = []
    for name, model in models.items():
        seconds = seconds_by_model[name]
        tokens = args.batch * args.seq / seconds
        baseline = args.batch * args.seq / seconds_by_model[LLAMA]
        mfu = step_flops(model, model.config, args.batch, args.seq, args.documents) / seconds / peak
        peak_mb = "failed" if memory[name] is None else f"{memory[name] / 2**20:.0f}"
        memory_ratio = "-" if None in (memory[name], memory[LLAMA]) else f"{memory[name] / memory[LLAMA]:.2f}x"
        rows.append([name, f"{tokens:.0f}", f"{tokens / baseline:.2f}x", f"{100 * mfu:.1f}%", peak_mb, memory_ratio])
    print_table(["model", "tokens/s", "vs transformers", "MFU", "step peak MB", "memory vs transformers"], rows)


if __name__ == "__main__":
    main()
