"""Long-context decoding with the KV cache sharded over sp = 2 gloo processes.

The prompt is prefilled with ring attention and each decoding step merges the ranks' partial
attention by log-sum-exp: the tokens must equal those of one process holding the whole cache
(transformers' own `generate` with SDPA for greedy; a plain cached loop for sampling).
"""

import pytest
import torch
import torch.distributed as dist
from transformers import LogitsProcessorList, TemperatureLogitsWarper
from transformers.cache_utils import DynamicCache

from lwm.generation import SamplingConfig, ShardedCache, choose, generate_sharded
from lwm.generation.sampling import TopKWarper
from lwm.model import LWMConfig
from lwm.parallel import SequenceParallel
from tests.helpers.distributed import run_distributed
from tests.helpers.tiny import tiny_lm

NEW_TOKENS = 12


def tiny_models(**grid):
    reference = tiny_lm("sdpa", **grid)
    reference.generation_config.eos_token_id = None  # always 12 new tokens, as generate_sharded without eos
    if reference.config.vision_grid_size:  # vectors that are not zero, so that a code fed the wrong place changes the tokens
        with torch.no_grad():
            reference.vision_grid.rows.normal_()
            reference.vision_grid.columns.normal_()
    model = tiny_lm("ring", **grid)
    model.load_state_dict(reference.state_dict())
    return reference, model


def prompt(length, seed):
    config = LWMConfig.from_preset("tiny")
    return torch.randint(0, config.total_vocab_size, (2, length), generator=torch.Generator().manual_seed(seed))


def sampling_processors():
    return LogitsProcessorList([TemperatureLogitsWarper(0.8), TopKWarper(20)])


@torch.no_grad()
def sample_single_process(model, input_ids, seed):
    cache, sequence, generator = DynamicCache(), input_ids, torch.Generator().manual_seed(seed)
    logits = model(input_ids=input_ids, cache=cache, use_cache=True).logits[:, -1]
    for _ in range(NEW_TOKENS):
        scores = sampling_processors()(sequence, logits.float())
        # The draw runs over the ids from the first to the last one allowed (lwm.generation.sampling.choose).
        allowed = torch.isfinite(scores).any(dim=0).nonzero().squeeze(1)
        first, last = int(allowed[0]), int(allowed[-1])
        token = first + choose(scores[:, first : last + 1], do_sample=True, generator=generator)[:, None]
        sequence = torch.cat([sequence, token], dim=1)
        logits = model(input_ids=token, cache=cache, use_cache=True).logits[:, -1]
    return sequence


def check_sharded_decoding(rank, world):
    reference, model = tiny_models()
    # 40: an even zigzag prefill; 43: 40 prefilled + 3 prompt tokens decoded; 3: shorter than the group.
    for length, layout in ((40, "zigzag"), (43, "zigzag"), (3, "zigzag"), (42, "contiguous")):
        input_ids = prompt(length, seed=length)
        expected = reference.generate(input_ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        tokens = generate_sharded(model, input_ids, NEW_TOKENS, SequenceParallel(layout=layout))
        assert torch.equal(tokens, expected), f"prompt {length} {layout}: {tokens[:, length:]} != {expected[:, length:]}"

    input_ids = prompt(24, seed=7)
    sampled = generate_sharded(
        model, input_ids, NEW_TOKENS, processors=sampling_processors(), sampling=SamplingConfig(),
        generator=torch.Generator().manual_seed(3),
    )
    assert torch.equal(sampled, sample_single_process(reference, input_ids, seed=3))

    # Models with a code grid: a run of codes crosses the ranks' prefill shards and the decoded prompt tail.
    for rope_3d in (False, True):
        reference, model = tiny_models(vision_grid_size=4, vision_rope_3d=rope_3d)
        codes = reference.config.vocab_size + prompt(23, seed=6) % reference.config.num_vision_codes
        input_ids = torch.cat([prompt(20, seed=5), codes], dim=1)
        expected = reference.generate(input_ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        assert torch.equal(generate_sharded(model, input_ids, NEW_TOKENS), expected), f"vision_rope_3d={rope_3d}"


def check_cache_is_sharded(rank, world):
    _, model = tiny_models()
    cache = ShardedCache(config=model.config)
    input_ids = prompt(8, seed=0)
    with torch.no_grad():
        model(input_ids=input_ids[:, rank * 4 : rank * 4 + 4], position_ids=torch.arange(rank * 4, rank * 4 + 4)[None],
              cache=cache, use_cache=True, sequence_parallel=SequenceParallel(layout="contiguous"))
        cache.decoding = True
        for step in range(3):
            model(input_ids=input_ids[:, :1], position_ids=torch.tensor([[8 + step]]), cache=cache, use_cache=True,
                  sequence_parallel=SequenceParallel(decoding=True))
    held = torch.tensor([cache.layers[0].keys.shape[2]])
    dist.all_reduce(held)
    assert cache.get_seq_length() == 11 and held.item() == 11  # every cached token lives on exactly one rank
    assert cache.layers[0].keys.shape[2] == (6 if rank == 0 else 5)  # decoded tokens alternate: ranks 0, 1, 0


def test_sharded_decoding_matches_single_process():
    run_distributed(check_sharded_decoding, 2)


def test_sharded_cache_keeps_one_copy_of_each_token():
    run_distributed(check_cache_is_sharded, 2)


def test_generate_sharded_needs_the_ring_backend():
    reference, _ = tiny_models()
    with pytest.raises(ValueError, match="needs a model with attn_implementation='ring'"):
        generate_sharded(reference, prompt(4, seed=0), 2)


def test_ring_backend_needs_a_group():
    _, model = tiny_models()
    with pytest.raises(RuntimeError, match="sequence_parallel"):
        model(input_ids=prompt(4, seed=0))


def test_generate_sharded_without_a_process_group():
    reference, model = tiny_models()
    input_ids = prompt(13, seed=5)
    expected = reference.generate(input_ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(generate_sharded(model, input_ids, 5), expected)


def test_generate_sharded_fills_finished_rows_with_eos():
    reference, model = tiny_models()
    input_ids = prompt(13, seed=5)
    expected = reference.generate(input_ids, max_new_tokens=6, do_sample=False)
    eos = expected[0, 15].item()  # row 0's third new token
    tokens = generate_sharded(model, input_ids, 6, eos_token_id=eos)
    first_eos = (expected[0, 13:] == eos).nonzero()[0].item() + 13
    assert torch.equal(tokens[0, : first_eos + 1], expected[0, : first_eos + 1])
    assert (tokens[0, first_eos:] == eos).all()
    finished = (expected[1, 13:] == eos).any()
    assert finished or torch.equal(tokens[1], expected[1])
