"""Attention backends. Block attention → (out, lse) and an exact merge are the one primitive;
blockwise iterates it over chunks, ring over the ranks of a process group."""

from transformers import AttentionInterface

from lwm.model.attention.blockwise import blockwise_attention
from lwm.model.attention.primitive import BlockMask, BlockSpan, attend_block, attend_block_backward, merge_partials


def blockwise_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, segment_ids=None, **kwargs):
    """transformers AttentionInterface adapter: [b, h, s, d] in, [b, s, h, d] out."""
    out = blockwise_attention(
        query, key, value, causal=True, segment_ids=segment_ids, scale=scaling,
        q_chunk=module.config.attn_q_chunk, kv_chunk=module.config.attn_kv_chunk,
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register("blockwise", blockwise_attention_forward)

__all__ = [
    "BlockMask",
    "BlockSpan",
    "attend_block",
    "attend_block_backward",
    "blockwise_attention",
    "merge_partials",
]
