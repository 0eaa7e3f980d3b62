"""Ring attention over 2 and 4 gloo processes equals plain attention on the unsharded sequence.

One spawn per world size checks every case (layouts, causal or not, packed documents whose
boundaries fall inside shards, GQA, batch 2, head_dim 64 and 128, whole pieces and small blocks).
"""

import itertools

import pytest
import torch

from lwm.model.attention import ring, ring_attention
from lwm.parallel import rank_and_world, shard_positions, shard_sequence, unshard_sequence
from tests.helpers.distributed import run_distributed

# Every combination of layout, causality, packing and head_dim; GQA in half of each, and blocks of
# 4 queries x 3 keys (cut inside pieces) with head_dim 64, whole pieces with 128. Without segment ids
# the fused CPU kernel takes whole pieces whatever the chunks (`kernel_tiles`).
CASES = [
    dict(layout=layout, causal=causal, packed=packed, head_dim=head_dim, kv_heads=2 if packed == causal else 4,
         chunks=(4, 3) if head_dim == 64 else (None, None))
    for layout, causal, packed, head_dim in itertools.product(
        ("zigzag", "contiguous"), (True, False), (False, True), (64, 128)
    )
]
BATCH, HEADS, PIECE = 2, 4, 6  # every rank holds 2 zigzag pieces of 6 positions (or 1 contiguous piece of 12)


def reference_attention(q, k, v, *, causal, segment_ids=None):
    """Softmax attention with an explicit mask, in float64."""
    q, k, v = q.double(), k.double(), v.double()
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    length = q.shape[2]
    allowed = torch.ones(length, length, dtype=torch.bool)
    if causal:
        allowed = allowed.tril()
    allowed = allowed[None, None]
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


def packed_segments(length, generator):
    """Four documents per row; one boundary is one position into a piece, the others are random."""
    rows = []
    for _ in range(BATCH):
        cuts = {PIECE + 1, *torch.randint(1, length, (2,), generator=generator).tolist()}
        row = torch.zeros(length, dtype=torch.long)
        for cut in sorted(cuts):
            row[cut:] += 1
        rows.append(row)
    return torch.stack(rows)


def check_case(world, case, seed):
    generator = torch.Generator().manual_seed(seed)
    length = 2 * world * PIECE
    d = case["head_dim"]
    q = torch.randn(BATCH, HEADS, length, d, generator=generator)
    k, v = (torch.randn(BATCH, case["kv_heads"], length, d, generator=generator) for _ in range(2))
    grad_out = torch.randn(BATCH, HEADS, length, d, generator=generator)
    segments = packed_segments(length, generator) if case["packed"] else None

    full = [x.double().requires_grad_() for x in (q, k, v)]
    expected = reference_attention(*full, causal=case["causal"], segment_ids=segments)
    expected.backward(grad_out.double())

    shard = lambda x, dim=2: shard_sequence(x, dim, *rank_and_world(), case["layout"])  # noqa: E731
    local = [shard(x).requires_grad_() for x in (q, k, v)]
    q_chunk, kv_chunk = case["chunks"]
    out = ring_attention(
        *local, causal=case["causal"], segment_ids=None if segments is None else shard(segments, 1),
        layout=case["layout"], q_chunk=q_chunk, kv_chunk=kv_chunk,
    )
    out.backward(shard(grad_out))

    label = f"W={world} {case}"
    torch.testing.assert_close(out, shard(expected).float(), atol=1e-5, rtol=0, msg=lambda m: f"{label} out: {m}")
    for name, mine, reference in zip("qkv", local, full):
        torch.testing.assert_close(
            mine.grad, shard(reference.grad).float(), atol=1e-4, rtol=0, msg=lambda m: f"{label} d{name}: {m}"
        )


def check_all_cases(rank, world):
    for index, case in enumerate(CASES):
        check_case(world, case, seed=index)
    check_sharding_helpers(rank, world)


def check_sharding_helpers(rank, world):
    x = torch.arange(3 * 4 * world).view(3, 4 * world)
    assert torch.equal(unshard_sequence(shard_sequence(x, 1, rank, world), 1), x)
    assert torch.equal(unshard_sequence(shard_sequence(x, 1, rank, world, "contiguous"), 1, layout="contiguous"), x)
    piece = 2
    expected = [rank * piece, rank * piece + 1, (2 * world - 1 - rank) * piece, (2 * world - 1 - rank) * piece + 1]
    assert shard_positions(4 * world, rank, world).tolist() == expected
    assert shard_positions(2 * world, rank, world, "contiguous").tolist() == [2 * rank, 2 * rank + 1]


@pytest.mark.parametrize("world", [2, 4])
def test_ring_matches_full_attention(world):
    run_distributed(check_all_cases, world)


@pytest.mark.parametrize("layout", ["zigzag", "contiguous"])
def test_single_rank_ring_is_plain_attention(layout, block_calls):
    calls = block_calls(ring)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 12, 16, generator=generator, requires_grad=True) for _ in range(3))
    out = ring_attention(q, k, v, layout=layout, q_chunk=5)
    torch.testing.assert_close(out, reference_attention(q, k, v, causal=True).float(), atol=1e-5, rtol=0)
    # Without segment ids the fused kernel takes whole pieces whatever the chunks: one call per piece pair
    # that anything of is seen (zigzag: 2 pieces, each causal on itself, the second fully after the first).
    assert sorted(calls) == (["causal", "causal", "full"] if layout == "zigzag" else ["causal"])


def test_ring_rejects_bad_shapes():
    q = torch.randn(1, 4, 6, 8)
    with pytest.raises(ValueError, match="equal length"):
        ring_attention(q, q[:, :, :4], q[:, :, :4])
    with pytest.raises(ValueError, match="not a multiple"):
        ring_attention(q[:, :, :5], q[:, :, :5], q[:, :, :5])
    with pytest.raises(ValueError, match="unknown sequence-parallel layout"):
        ring_attention(q, q, q, layout="striped")
    with pytest.raises(ValueError, match="segment_ids"):
        ring_attention(q, q, q, segment_ids=torch.zeros(1, 5, dtype=torch.long))
