"""Computing only the head that the constraints allow gives exactly the tokens of computing both."""

import pytest
import torch
from transformers import LogitsProcessor, TopKLogitsWarper

from lwm.generation.logits_process import FrameLayout, FrameStructureLogitsProcessor, TextOnlyLogitsProcessor
from lwm.generation.sampling import GREEDY, SamplingConfig, TopKWarper, allowed_span, choose, next_head, sample
from tests.helpers.tiny import tiny_lm

PROMPT = torch.tensor([[1, 40, 41, 42, 43, 44, 45], [0, 0, 0, 1, 50, 51, 52]])
PROMPT_MASK = (PROMPT != 0).long()
UNCONDITIONAL = torch.tensor([1, 60, 61])
SEEDED = SamplingConfig(temperature=1.3, top_k=20)


class BothHeads(LogitsProcessor):
    """The same constraint without `next_head`: the decode loop computes both heads, as it always did."""

    def __init__(self, processor: LogitsProcessor):
        self.processor = processor

    def __call__(self, input_ids, scores):
        return self.processor(input_ids, scores)


@pytest.fixture(scope="module")
def model():
    model = tiny_lm()
    with torch.no_grad():  # the text head must lose where it is not allowed: make it the favourite
        model.lm_head.weight.mul_(10)
    return model


def both_ways(model, processor, schedule, guided, seed=0):
    kwargs = dict(schedule=schedule)
    if guided:
        kwargs["unconditional_ids"] = UNCONDITIONAL
    split = sample(model, PROMPT, PROMPT_MASK, processors=[processor], generator=torch.Generator().manual_seed(seed),
                   **kwargs)
    both = sample(model, PROMPT, PROMPT_MASK, processors=[BothHeads(processor)],
                  generator=torch.Generator().manual_seed(seed), **kwargs)
    return split, both


@pytest.mark.parametrize("guidance", [1.0, 5.0], ids=["unguided", "guided"])
@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_frames_then_text_equal_decoding_with_both_heads(model, sampling, guidance):
    layout = FrameLayout.from_config(model.config, codes_per_frame=4)
    structure = FrameStructureLogitsProcessor(layout, num_frames=2, vision_start=PROMPT.shape[1] + 1)
    settings = SamplingConfig(**{**sampling.__dict__, "guidance_scale": guidance})
    # one free token before the block (both heads), two frames (vision head), then text (text head)
    heads = []  # the `head` of every forward
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: heads.append(kwargs.get("head")), with_kwargs=True)
    try:
        split, both = both_ways(model, structure, [(1 + 2 * layout.frame_length + 5, settings)], guided=guidance != 1)
    finally:
        hook.remove()
    assert torch.equal(split, both)
    assert split[:, 1 : 1 + 2 * layout.frame_length].min() >= model.config.vocab_size
    assert split[:, 1 + 2 * layout.frame_length :].max() < model.config.vocab_size
    assert {None, "vision", "text"} <= set(heads)


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_text_equals_decoding_with_both_heads(model, sampling):
    split, both = both_ways(model, TextOnlyLogitsProcessor(model.config.vocab_size), [(12, sampling)], guided=False)
    assert torch.equal(split, both)


def test_rows_at_different_stages_use_both_heads():
    layout = FrameLayout(text_vocab_size=10, num_codes=4, codes_per_frame=2)
    structure = FrameStructureLogitsProcessor(layout, num_frames=1, vision_start=torch.tensor([3, 5]))
    heads = [next_head([structure], torch.zeros(1, length, dtype=torch.long)) for length in range(2, 10)]
    # row 0's block is ids 3..5, row 1's 5..7: vision only while both are inside, text once both are past
    assert heads == [None, None, None, "vision", None, None, "text", "text"]
    assert next_head([structure, TextOnlyLogitsProcessor(10)], torch.zeros(1, 2, dtype=torch.long)) == "text"


def test_the_draw_spans_the_allowed_ids_only():
    scores = torch.full((2, 10), float("-inf"))
    scores[0, 3:5], scores[1, 6] = 0.0, 1.0
    assert allowed_span(scores) == slice(3, 7)
    assert allowed_span(torch.full((1, 4), float("-inf"))) == slice(0, 4)


def test_top_k_by_selection_equals_transformers_top_k():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 300, generator=generator).round(decimals=1)  # many ties at the k-th score
    scores[1, :200] = float("-inf")  # fewer finite scores than k in row 1
    for k in (1, 5, 150, 299, 300, 1000):
        assert torch.equal(TopKWarper(k)(None, scores), TopKLogitsWarper(k)(None, scores.clone())), k


def test_the_draw_follows_the_distribution_and_never_takes_an_excluded_id():
    probabilities = torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05, 0.0])
    scores = probabilities.log().expand(40_000, -1)  # log 0 = -inf: excluded
    drawn = choose(scores, do_sample=True, generator=torch.Generator().manual_seed(0))
    frequencies = torch.bincount(drawn, minlength=6) / len(drawn)
    assert frequencies[[1, 5]].sum() == 0
    # 40,000 draws: a frequency's standard deviation is at most 0.0025, so 0.01 is four of them
    assert torch.allclose(frequencies, probabilities, atol=0.01), frequencies
    again = choose(scores[:5], do_sample=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, drawn[:5])  # seeded: the same draws
