"""Attention backends. Block attention → (out, lse) and an exact merge are the one primitive;
blockwise iterates it over chunks, ring over the ranks of a process group."""

from transformers import AttentionInterface

from lwm.model.attention.blockwise import blockwise_attention
from lwm.model.attention.primitive import BlockMask, BlockSpan, attend_block, attend_block_backward, merge_partials
from lwm.model.attention.ring import ring_attention, sharded_decode_attention


def blockwise_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, segment_ids=None, **kwargs):
    """transformers AttentionInterface adapter: [b, h, s, d] in, [b, s, h, d] out."""
    out = blockwise_attention(
        query, key, value, causal=True, segment_ids=segment_ids, scale=scaling,
        q_chunk=module.config.attn_q_chunk, kv_chunk=module.config.attn_kv_chunk,
    )
    return out.transpose(1, 2).contiguous(), None


def ring_attention_forward(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, segment_ids=None, sequence_parallel=None,
    **kwargs,
):
    """transformers AttentionInterface adapter for the sp group the model's forward was given."""
    sp = sequence_parallel
    if sp is None:
        raise RuntimeError(
            "attn_implementation='ring' runs over a sequence-parallel group: pass the model "
            "`sequence_parallel=lwm.parallel.SequenceParallel(group)`"
        )
    if sp.decoding:
        if segment_ids is not None:
            raise ValueError("sharded decoding does not take segment_ids")
        out = sharded_decode_attention(query, key, value, group=sp.group, scale=scaling)
    else:
        out = ring_attention(
            query, key, value, group=sp.group, causal=True, segment_ids=segment_ids, scale=scaling,
            layout=sp.layout, q_chunk=module.config.attn_q_chunk, kv_chunk=module.config.attn_kv_chunk,
        )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register("blockwise", blockwise_attention_forward)
AttentionInterface.register("ring", ring_attention_forward)

__all__ = [
    "BlockMask",
    "BlockSpan",
    "attend_block",
    "attend_block_backward",
    "blockwise_attention",
    "merge_partials",
    "ring_attention",
    "sharded_decode_attention",
]
