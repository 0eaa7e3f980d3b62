import pytest
import torch

from lwm.model.attention import blockwise, blockwise_attention
from lwm.model.attention.blockwise import _documents
from lwm.model.attention.primitive import BlockSpan, attend_block, block_mask, merge_partials


def reference_attention(q, k, v, *, causal, segment_ids=None, scale=None):
    """Plain softmax attention with an explicit mask, in float64."""
    q, k, v = q.double(), k.double(), v.double()
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    q_len, k_len = q.shape[2], k.shape[2]
    scores = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    allowed = torch.ones(q_len, k_len, dtype=torch.bool)
    if causal:
        allowed = allowed.tril(k_len - q_len)
    allowed = allowed[None, None]
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, None, -q_len:, None] == segment_ids[:, None, None, :])
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.nan_to_num(probs) @ v


def packed_segments(batch, length, generator):
    """Documents of random lengths, with boundaries that fall inside chunks."""
    rows = []
    for _ in range(batch):
        cuts = sorted(torch.randint(1, length, (3,), generator=generator).tolist())
        row = torch.zeros(length, dtype=torch.long)
        for doc, cut in enumerate(cuts, start=1):
            row[cut:] = doc
        rows.append(row + 1)
    return torch.stack(rows)


def recurring_segments(batch, length, generator):
    """Segment ids that come back after another one (1 1 2 2 1 1): not one run per document."""
    segments = packed_segments(batch, length, generator)
    return torch.where(segments == 3, 1, segments)


@pytest.fixture(params=[True, False], ids=["fused-whole-documents", "chunk-grid"])
def kernel_tiles(request, monkeypatch):
    """Both ways blockwise cuts its work: whole documents (a fused kernel, as on CPU) and the chunk grid
    that the exact non-fused kernel gets on other devices."""
    if not request.param:
        monkeypatch.setattr(blockwise, "kernel_tiles", lambda q: False)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("packed", [None, packed_segments, recurring_segments])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
@pytest.mark.parametrize("q_len,k_len", [(37, 37), (64, 64), (5, 37)])
@pytest.mark.usefixtures("kernel_tiles")
def test_blockwise_matches_reference(causal, packed, heads, kv_heads, q_len, k_len):
    generator = torch.Generator().manual_seed(q_len * 7 + heads)
    shape = lambda h, n: (2, h, n, 16)  # noqa: E731
    q = torch.randn(shape(heads, q_len), generator=generator, requires_grad=True)
    k = torch.randn(shape(kv_heads, k_len), generator=generator, requires_grad=True)
    v = torch.randn(shape(kv_heads, k_len), generator=generator, requires_grad=True)
    segments = packed(2, k_len, generator) if packed else None
    if packed is recurring_segments:
        assert _documents(segments) is None  # so this layout takes the chunk grid, not the per-document path

    out = blockwise_attention(q, k, v, causal=causal, segment_ids=segments, q_chunk=8, kv_chunk=6)
    expected = reference_attention(q, k, v, causal=causal, segment_ids=segments)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)

    grad = torch.randn(out.shape, generator=generator)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(expected, (q, k, v), grad.double())
    for name, a, b in zip("qkv", got, want):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=0, msg=lambda detail, name=name: f"d{name}: {detail}")


def test_blockwise_matches_sdpa_fused():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 100, 32, generator=generator, requires_grad=True) for _ in range(3))
    out = blockwise_attention(q, k, v, causal=True, q_chunk=32, kv_chunk=16)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("packed", [None, packed_segments])
def test_a_fused_kernel_takes_each_causal_document_in_one_call(packed, block_calls):
    """One causal sequence costs one kernel call, as plain SDPA does, not one per block pair of chunks."""
    calls = block_calls(blockwise)
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 64, 16, generator=generator, requires_grad=True) for _ in range(3))
    segments = packed(2, 64, generator) if packed else None
    out = blockwise_attention(q, k, v, causal=True, segment_ids=segments, q_chunk=8, kv_chunk=8)
    documents = 1 if packed is None else sum(len(runs) for runs in _documents(segments))
    assert calls == ["causal"] * documents
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, causal=True, segment_ids=segments),
                               atol=1e-5, rtol=0)


def test_bfloat16_runs_close_to_float32():
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=generator) for _ in range(3))
    full = blockwise_attention(q, k, v, q_chunk=16, kv_chunk=16)
    half = blockwise_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), q_chunk=16, kv_chunk=16)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, atol=3e-2, rtol=0)


def test_merge_of_two_halves_equals_whole():
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 8, 16, generator=generator) for _ in range(3))
    whole = BlockSpan(0, 8)
    out_all, lse_all = attend_block(q, k, v, block_mask(whole, whole, causal=False, dtype=q.dtype, device="cpu"), 0.25)
    half = BlockSpan(0, 4)
    parts = [
        attend_block(q, k[:, :, s], v[:, :, s], block_mask(whole, half, causal=False, dtype=q.dtype, device="cpu"), 0.25)
        for s in (slice(0, 4), slice(4, 8))
    ]
    out, lse = merge_partials(*parts[0], *parts[1])
    torch.testing.assert_close(out, out_all, atol=1e-6, rtol=0)
    torch.testing.assert_close(lse, lse_all, atol=1e-6, rtol=0)


def test_rows_that_see_nothing_in_a_block_do_not_count():
    q, k, v = (torch.randn(1, 1, 4, 8) for _ in range(3))
    segments_q = torch.tensor([[1, 1, 2, 2]])
    segments_k = torch.tensor([[1, 1, 1, 1]])
    mask = block_mask(BlockSpan(0, 4, segments_q), BlockSpan(0, 4, segments_k), causal=False, dtype=q.dtype, device="cpu")
    out, lse = attend_block(q, k, v, mask, 0.3)
    assert torch.isinf(lse[0, 0, 2:]).all() and (out[0, 0, 2:] == 0).all()
    assert torch.isfinite(lse[0, 0, :2]).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": torch.zeros(1, 3, 4, 8)}, "multiple"),
        ({"segment_ids": torch.zeros(1, 5, dtype=torch.long)}, "segment_ids"),
        ({"q_chunk": 0}, "chunk"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    arguments = {"q": torch.zeros(1, 4, 4, 8), "k": torch.zeros(1, 2, 4, 8), "v": None, "segment_ids": None}
    arguments.update(kwargs)
    arguments["v"] = torch.zeros(arguments["k"].shape)
    q, k, v = arguments.pop("q"), arguments.pop("k"), arguments.pop("v")
    with pytest.raises(ValueError, match=message):
        blockwise_attention(q, k, v, **arguments)


def test_documents_are_runs_of_one_segment_id():
    assert _documents(torch.tensor([[1, 1, 2, 2, 0], [5, 5, 5, 5, 5]])) == [[(0, 2), (2, 4), (4, 5)], [(0, 5)]]
    assert _documents(torch.tensor([[1, 1, 2, 2, 1]])) is None  # id 1 comes back: the masked grid handles it
