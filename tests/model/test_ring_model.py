"""LWMForCausalLM with ring attention over sp = 2 gloo processes equals one process on the full sequence.

Each rank gets its zigzag shard of the ids, global positions, document ids, code places and pre-shifted targets,
and the global loss denominators; the shard losses sum to the full loss, and the parameter
gradients summed over the group equal the full-sequence gradients.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F

from lwm.model import IGNORE_INDEX, LWMConfig, LWMForCausalLM
from lwm.parallel import SequenceParallel, shard_sequence
from tests.helpers.distributed import run_distributed

BATCH, LENGTH = 2, 48  # zigzag pieces of 12 positions at sp = 2


def multimodal_batch(config, generator):
    """Text and vision ids interleaved in two packed documents per row, some targets ignored."""
    text = torch.randint(0, config.vocab_size, (BATCH, LENGTH), generator=generator)
    vision_ids = (config.vocab_size, config.vocab_size + config.num_vision_codes + 2)  # codes, <eof>, <eov>
    vision = torch.randint(*vision_ids, (BATCH, LENGTH), generator=generator)
    is_vision = torch.zeros(BATCH, LENGTH, dtype=torch.bool)
    is_vision[:, 10:30] = True  # spans a shard boundary; row 1 also has vision in its second document
    is_vision[1, 38:44] = True
    input_ids = torch.where(is_vision, vision, text)
    labels = input_ids.clone()
    labels[:, :3] = IGNORE_INDEX
    segment_ids = torch.ones(BATCH, LENGTH, dtype=torch.long)
    segment_ids[0, 17:] = 2  # boundaries inside a piece
    segment_ids[1, 31:] = 2
    loss_weights = torch.rand(BATCH, LENGTH, generator=generator) + 0.5
    return input_ids, labels, segment_ids, loss_weights


def document_positions(segment_ids):
    index = torch.arange(segment_ids.shape[1]).expand_as(segment_ids)
    starts = F.pad(segment_ids[:, 1:] != segment_ids[:, :-1], (1, 0), value=True)
    return index - torch.where(starts, index, 0).cummax(dim=1).values


def shifted_targets(labels, loss_weights, segment_ids):
    """Position t predicts labels[t + 1] of its own document, with that target's weight."""
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    crosses = F.pad(segment_ids[:, 1:] != segment_ids[:, :-1], (0, 1), value=True)
    return targets.masked_fill(crosses, IGNORE_INDEX), F.pad(loss_weights[:, 1:], (0, 1), value=0.0)


def check_model_gradients(rank, world):
    torch.manual_seed(0)
    # With a code grid (vectors not zero, rotary axes too), whose places are counted on the whole rows
    # and sharded with them.
    tiny = dict(attn_q_chunk=8, attn_kv_chunk=8, vision_grid_size=4, vision_rope_3d=True)
    config = LWMConfig.from_preset("tiny", attn_implementation="sdpa", **tiny)
    reference = LWMForCausalLM(config)
    with torch.no_grad():
        reference.vision_grid.rows.normal_()
        reference.vision_grid.columns.normal_()
    model = LWMForCausalLM(LWMConfig.from_preset("tiny", attn_implementation="ring", **tiny))
    model.load_state_dict(reference.state_dict())
    input_ids, labels, segment_ids, loss_weights = multimodal_batch(config, torch.Generator().manual_seed(1))
    positions = document_positions(segment_ids)
    grid_ids = reference.grid_ids_of(input_ids)

    full = reference(
        input_ids=input_ids, labels=labels, loss_weights=loss_weights, segment_ids=segment_ids, position_ids=positions
    )
    full.loss.backward()

    targets, weights = shifted_targets(labels, loss_weights, segment_ids)
    valid = targets != IGNORE_INDEX
    is_vision = targets >= config.vocab_size
    denominators = ((weights * (valid & ~is_vision)).sum(), (weights * (valid & is_vision)).sum())
    shard = lambda x: shard_sequence(x, 1, rank, world)  # noqa: E731
    for checkpointing in (False, True):  # recomputing a layer in the backward pass runs its ring again
        if checkpointing:
            model.activation_checkpointing_enable()
        model.zero_grad()
        out = model(
            input_ids=shard(input_ids), position_ids=shard(positions), segment_ids=shard(segment_ids),
            vision_grid_ids=shard(grid_ids), shift_labels=shard(targets), loss_weights=shard(weights),
            loss_denominators=denominators, sequence_parallel=SequenceParallel(),
        )
        out.loss.backward()  # with checkpointing, the layers' recomputation gets the group again from their arguments

        label = f"rank {rank}, checkpointing={checkpointing}"
        loss = out.loss.detach().clone()
        dist.all_reduce(loss)
        torch.testing.assert_close(loss, full.loss.detach(), rtol=1e-4, atol=0, msg=lambda m: f"{label} loss: {m}")
        for (name, param), (_, expected) in zip(model.named_parameters(), reference.named_parameters()):
            grad = param.grad.clone()
            dist.all_reduce(grad)
            torch.testing.assert_close(grad, expected.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{label} {name}: {m}")

    with torch.no_grad():  # without labels, each rank's logits are its shard of the whole rows'
        logits = model(
            input_ids=shard(input_ids), position_ids=shard(positions), segment_ids=shard(segment_ids),
            vision_grid_ids=shard(grid_ids), sequence_parallel=SequenceParallel(),
        ).logits
        full_logits = reference(input_ids=input_ids, segment_ids=segment_ids, position_ids=positions).logits
    torch.testing.assert_close(logits, shard(full_logits), rtol=1e-4, atol=1e-5)


def test_ring_model_matches_single_process():
    run_distributed(check_model_gradients, 2)
