"""The fused CUDA kernels behind the block primitive, against float64 references.

Every test needs a CUDA GPU and is skipped without one (CI has none); they run on a GPU machine.
"""

import pytest
import torch

from lwm.model.attention import blockwise_attention
from lwm.model.attention.primitive import (
    BlockMask,
    BlockSpan,
    _pick_kernel,
    attend_block,
    attend_block_backward,
    block_mask,
    merge_partials,
)

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (checks the fused CUDA attention kernels)"
)

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}  # used as both atol and rtol

# One query block against a row of key blocks, (start, length) in global positions. Lengths are
# not multiples of 32 (the efficient kernel pads its LSE to 32) nor of 16 (it aligns bias rows).
CASES = {
    # no mask: both blocks "full"
    "full": dict(causal=False, packed=False, q=(0, 45), k=[(0, 37), (37, 33)], kinds=["full", "full"]),
    # a fully-past block, then the square diagonal block
    "causal": dict(causal=True, packed=False, q=(37, 45), k=[(0, 37), (37, 45)], kinds=["full", "causal"]),
    # a diagonal block with fewer keys than queries, then a block that rows 0..36 do not see at all
    "causal_uneven": dict(causal=True, packed=False, q=(0, 45), k=[(0, 37), (37, 8)], kinds=["causal", "masked"]),
    # documents with boundaries inside both blocks; some rows see only one block, some neither
    "masked": dict(causal=False, packed=True, q=(0, 45), k=[(0, 37), (37, 33)], kinds=["masked", "masked"]),
}


def documents(lengths: list[tuple[int, int]]) -> torch.Tensor:
    """Segment ids from (id, run length) pairs."""
    return torch.cat([torch.full((n,), doc) for doc, n in lengths])


# For "masked": query documents 1, 2, 4 and 9; keys 0..36 hold documents 1, 2 and keys 37..69
# documents 2, 4. So document 1 sees only the first block, 4 only the second, 9 nothing anywhere.
Q_DOCS = torch.stack([documents([(1, 10), (2, 15), (4, 12), (9, 8)]), documents([(1, 3), (2, 30), (4, 7), (9, 5)])])
K_DOCS = torch.stack([
    documents([(1, 15), (2, 22), (2, 10), (4, 23)]),
    documents([(1, 20), (2, 17), (2, 2), (4, 31)]),
])


def dense_reference(q, k, v, allowed, scale):
    """Softmax attention in float64 with an explicit boolean mask: (out, lse); empty rows give 0, -inf."""
    q, k, v = q.double(), k.double(), v.double()
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))[..., None])
    return probs @ v, lse


def case_tensors(case, dtype, heads, kv_heads, head_dim, generator):
    """q, k, v (all keys of the case) on CUDA, the global boolean mask, and the BlockMask of each key block."""
    spec = CASES[case]
    q_start, q_len = spec["q"]
    k_len = sum(n for _, n in spec["k"])
    make = lambda h, n: torch.randn(2, h, n, head_dim, generator=generator).to("cuda", dtype)  # noqa: E731
    q, k, v = make(heads, q_len), make(kv_heads, k_len), make(kv_heads, k_len)
    q_docs = Q_DOCS.cuda() if spec["packed"] else None
    k_docs = K_DOCS.cuda() if spec["packed"] else None

    q_pos, k_pos = torch.arange(q_start, q_start + q_len), torch.arange(k_len)
    allowed = torch.ones(1, 1, q_len, k_len, dtype=torch.bool)
    if spec["causal"]:
        allowed = allowed & (k_pos[None, :] <= q_pos[:, None])
    if spec["packed"]:
        allowed = allowed & (Q_DOCS[:, None, :, None] == K_DOCS[:, None, None, :])

    q_span = BlockSpan(q_start, q_len, q_docs)
    blocks = []
    for start, length in spec["k"]:
        cols = slice(start, start + length)
        k_span = BlockSpan(start, length, None if k_docs is None else k_docs[:, cols])
        blocks.append((cols, block_mask(q_span, k_span, causal=spec["causal"], dtype=dtype, device="cuda")))
    assert [mask.kind for _, mask in blocks] == spec["kinds"]
    return q, k, v, allowed.expand(2, 1, q_len, k_len).cuda(), blocks


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_attend_block_forward_and_backward_match_float64(case, dtype, head_dim, heads, kv_heads):
    generator = torch.Generator().manual_seed(head_dim + heads * kv_heads)
    q, k, v, allowed, blocks = case_tensors(case, dtype, heads, kv_heads, head_dim, generator)
    scale = head_dim**-0.5
    tol = TOLERANCE[dtype]

    # Forward: each block against the reference restricted to its keys, and their merge against all keys.
    merged = None
    for cols, mask in blocks:
        out, lse = attend_block(q, k[:, :, cols], v[:, :, cols], mask, scale)
        assert out.dtype == lse.dtype == torch.float32
        want_out, want_lse = dense_reference(q, k[:, :, cols], v[:, :, cols], allowed[..., cols], scale)
        torch.testing.assert_close(out.double(), want_out, atol=tol, rtol=tol)
        assert torch.equal(torch.isinf(lse), torch.isinf(want_lse)), "rows that see nothing must have lse -inf"
        torch.testing.assert_close(lse.double().nan_to_num(neginf=0), want_lse.nan_to_num(neginf=0), atol=tol, rtol=tol)
        merged = (out, lse) if merged is None else merge_partials(*merged, out, lse)

    # Backward: every block gets the FINAL out and lse; the block gradients must add up to the
    # float64 autograd gradient of attention over all keys.
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    final_out, final_lse = dense_reference(q64, k64, v64, allowed, scale)
    torch.testing.assert_close(merged[0].double(), final_out.detach(), atol=tol, rtol=tol)
    grad_out = torch.randn(final_out.shape, generator=generator).to("cuda", dtype)
    want_dq, want_dk, want_dv = torch.autograd.grad(final_out, (q64, k64, v64), grad_out.double())

    dq = torch.zeros_like(want_dq)
    for cols, mask in blocks:
        block_dq, block_dk, block_dv = attend_block_backward(
            grad_out, q, k[:, :, cols], v[:, :, cols], final_out.detach().to(dtype), final_lse.detach().float(), mask, scale
        )
        assert block_dk.shape == k[:, :, cols].shape
        dq += block_dq.double()
        torch.testing.assert_close(block_dk.double(), want_dk[:, :, cols], atol=tol, rtol=tol, msg=lambda m: f"dk: {m}")
        torch.testing.assert_close(block_dv.double(), want_dv[:, :, cols], atol=tol, rtol=tol, msg=lambda m: f"dv: {m}")
    torch.testing.assert_close(dq, want_dq, atol=tol, rtol=tol, msg=lambda m: f"dq: {m}")


@pytest.mark.parametrize(
    "dtype,kind,q_len,k_len,head_dim,expected",
    [
        (torch.bfloat16, "full", 45, 37, 128, "flash"),
        (torch.float16, "causal", 64, 64, 64, "flash"),
        (torch.bfloat16, "causal", 45, 37, 128, "efficient"),  # flash would align the diagonal bottom-right
        (torch.bfloat16, "masked", 45, 37, 128, "efficient"),
        (torch.float32, "full", 45, 37, 64, "efficient"),
        (torch.bfloat16, "full", 45, 37, 320, "efficient"),  # beyond flash's head_dim 256
        (torch.bfloat16, "full", 45, 37, 36, "reference"),  # head_dim not a multiple of 8
        (torch.float64, "full", 45, 37, 64, "reference"),
    ],
)
def test_cuda_blocks_pick_the_fused_kernels(dtype, kind, q_len, k_len, head_dim, expected):
    if expected == "flash" and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("FlashAttention-2 needs compute capability 8.0 or newer")
    q = torch.zeros(1, 2, q_len, head_dim, dtype=dtype, device="cuda")
    k = torch.zeros(1, 2, k_len, head_dim, dtype=dtype, device="cuda")
    assert _pick_kernel(q, k, BlockMask(kind)) == expected


def test_float64_falls_back_to_the_reference_kernel():
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 20, 16, generator=generator, dtype=torch.float64).cuda() for _ in range(3))
    mask = block_mask(BlockSpan(0, 20), BlockSpan(0, 20), causal=True, dtype=q.dtype, device="cuda")
    out, lse = attend_block(q, k, v, mask, 0.25)
    allowed = torch.ones(20, 20, dtype=torch.bool, device="cuda").tril()
    want_out, want_lse = dense_reference(q, k, v, allowed, 0.25)
    torch.testing.assert_close(out.double(), want_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(lse.double(), want_lse, atol=1e-5, rtol=0)


def sdpa_reference(q, k, v, *, causal, segment_ids):
    """torch SDPA with an explicit boolean mask, float64 on CPU; queries are the last q_len keys."""
    q, k, v = (t.detach().double().cpu().requires_grad_() for t in (q, k, v))
    q_len, k_len = q.shape[2], k.shape[2]
    allowed = torch.ones(q_len, k_len, dtype=torch.bool)
    if causal:
        allowed = allowed.tril(k_len - q_len)
    allowed = allowed[None, None]
    if segment_ids is not None:
        segment_ids = segment_ids.cpu()
        allowed = allowed & (segment_ids[:, None, -q_len:, None] == segment_ids[:, None, None, :])
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)
    return out, (q, k, v)


@pytest.mark.parametrize("causal,packed", [(True, False), (True, True), (False, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
@pytest.mark.parametrize("q_len", [300, 77])
@pytest.mark.parametrize("chunks", [(96, 80), (64, 64)])  # equal chunks put square causal blocks on the diagonal
def test_blockwise_on_cuda_matches_sdpa_float64(causal, packed, dtype, heads, kv_heads, q_len, chunks):
    k_len = 300
    generator = torch.Generator().manual_seed(q_len + heads * kv_heads)
    make = lambda h, n: torch.randn(2, h, n, 64, generator=generator).to("cuda", dtype).requires_grad_()  # noqa: E731
    q, k, v = make(heads, q_len), make(kv_heads, k_len), make(kv_heads, k_len)
    segments = None
    if packed:  # documents of lengths 70, 95, 60, 75 and 40, 170, 90: boundaries inside chunks
        segments = torch.stack([documents([(1, 70), (2, 95), (3, 60), (4, 75)]), documents([(5, 40), (6, 170), (7, 90)])])
        segments = segments.cuda()

    out = blockwise_attention(q, k, v, causal=causal, segment_ids=segments, q_chunk=chunks[0], kv_chunk=chunks[1])
    want, inputs = sdpa_reference(q, k, v, causal=causal, segment_ids=segments)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.double().cpu(), want.detach(), atol=tol, rtol=tol)

    grad = torch.randn(out.shape, generator=generator).to("cuda", dtype)
    got = torch.autograd.grad(out, (q, k, v), grad)
    expected = torch.autograd.grad(want, inputs, grad.double().cpu())
    for name, a, b in zip("qkv", got, expected):
        torch.testing.assert_close(a.double().cpu(), b, atol=tol, rtol=tol, msg=lambda m, name=name: f"d{name}: {m}")
