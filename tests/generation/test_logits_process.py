import pytest
import torch
from transformers import LogitsProcessorList

from lwm.generation.logits_process import (
    FrameLayout,
    FrameStructureLogitsProcessor,
    TextOnlyLogitsProcessor,
    VisionOnlyLogitsProcessor,
    keep_interval,
)
from lwm.model import LWMConfig
from tests.helpers.tiny import tiny_lm

V, K, CODES = 32, 8, 4  # a toy id space: 32 text ids, 8 codes, 4 codes per frame
WIDTH = V + K + 6  # the vision vocabulary holds 4 reserved ids after <eof>, <eov>
LAYOUT = FrameLayout(V, K, CODES)
EOF, EOV = V + K, V + K + 1


def allowed_ids(scores: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(torch.isfinite(row)).flatten().tolist()) for row in scores]


def expected_ids(done: int, num_frames: int) -> set[int]:
    """The frame rule written out plainly: `done` ids of the block generated so far."""
    if done < 0:
        return set(range(WIDTH))
    if done >= num_frames * (CODES + 1):
        return set(range(V))
    frame, position = divmod(done, CODES + 1)
    if position < CODES:
        return set(range(V, V + K))
    return {EOV if frame == num_frames - 1 else EOF}


def test_layout_ids():
    assert (LAYOUT.eof_token_id, LAYOUT.eov_token_id, LAYOUT.frame_length) == (EOF, EOV, CODES + 1)
    config = LWMConfig.from_preset("tiny")
    layout = FrameLayout.from_config(config, 16)
    assert (layout.eof_token_id, layout.eov_token_id) == (config.eof_token_id, config.eov_token_id)


def test_frame_ids_and_codes_round_trip():
    codes = torch.arange(2 * 2 * 2 * 2).reshape(2, 2, 2, 2) % K  # [batch, frames, h, w]
    ids = LAYOUT.frame_ids(codes, last_delimiter=EOV)
    assert ids[0].tolist() == [V + 0, V + 1, V + 2, V + 3, EOF, V + 4, V + 5, V + 6, V + 7, EOV]
    assert torch.equal(LAYOUT.frame_codes(ids, (2, 2)), codes)
    assert LAYOUT.frame_ids(codes[0])[-1] == EOF  # <eof> closes every frame unless told otherwise


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: LAYOUT.frame_ids(torch.zeros(1, 3, 3, dtype=torch.long)), "frames have 9 codes"),
        (lambda: LAYOUT.frame_ids(torch.full((1, 2, 2), K)), "codes must lie in"),
        (lambda: LAYOUT.frame_codes(torch.full((7,), V), (2, 2)), "not a whole number"),
        (lambda: LAYOUT.frame_codes(torch.full((5,), V), (2, 2)), "does not end in <eof> or <eov>"),
        (lambda: LAYOUT.frame_codes(torch.tensor([V, V, 3, V, EOF]), (2, 2)), "not a vision code"),
        (lambda: LAYOUT.frame_codes(torch.tensor([V, V, V, V, EOF]), (1, 2)), r"frame shape \(1, 2\)"),
        (lambda: FrameLayout(V, 0, CODES), "num_codes must be positive"),
        (lambda: FrameStructureLogitsProcessor(LAYOUT, 0, 3), "num_frames must be at least 1"),
    ],
)
def test_bad_inputs_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_keep_interval_per_row():
    scores = torch.zeros(2, 10)
    kept = keep_interval(scores, torch.tensor([0, 4]), torch.tensor([3, 10]))
    assert allowed_ids(kept) == [{0, 1, 2}, set(range(4, 10))]


def test_keep_interval_for_all_rows_at_once_equals_the_mask_per_row():
    scores = torch.randn(3, 12)
    one_interval = keep_interval(scores, 2, 7)
    per_row = keep_interval(scores, torch.tensor([2, 2, 2]), torch.tensor([7, 7, 8]))
    assert torch.equal(one_interval[:, :7], per_row[:, :7]) and allowed_ids(one_interval) == [set(range(2, 7))] * 3
    assert allowed_ids(per_row)[2] == set(range(2, 8))


def test_text_only_and_vision_only():
    scores = torch.randn(3, WIDTH)
    assert allowed_ids(TextOnlyLogitsProcessor(V)(None, scores)) == [set(range(V))] * 3
    assert allowed_ids(VisionOnlyLogitsProcessor(LAYOUT)(None, scores)) == [set(range(V, EOV + 1))] * 3
    kept = TextOnlyLogitsProcessor(V)(None, scores)
    assert torch.equal(kept[:, :V], scores[:, :V])  # allowed scores are untouched


@pytest.mark.parametrize("num_frames", [1, 3])
def test_frame_structure_follows_the_rule_at_every_stage(num_frames):
    prompt = 5
    processor = FrameStructureLogitsProcessor(LAYOUT, num_frames, vision_start=prompt)
    for length in range(1, prompt + num_frames * (CODES + 1) + 4):
        input_ids = torch.zeros(1, length, dtype=torch.long)
        allowed = allowed_ids(processor(input_ids, torch.randn(1, WIDTH)))[0]
        assert allowed == expected_ids(length - prompt, num_frames), f"length {length}"


def test_frame_structure_rows_at_different_stages():
    starts = torch.tensor([12, 8, 6, 3, 2, 20])  # per row: where its vision block starts
    frames = torch.tensor([2, 2, 2, 2, 1, 2])
    processor = FrameStructureLogitsProcessor(LAYOUT, frames, vision_start=starts)
    length = 12
    allowed = allowed_ids(processor(torch.zeros(len(starts), length, dtype=torch.long), torch.randn(len(starts), WIDTH)))
    for row, (start, count) in enumerate(zip(starts.tolist(), frames.tolist())):
        assert allowed[row] == expected_ids(length - start, count), f"row {row}"
    # the rows really are at different stages: code, <eof>, code, <eov>, after the block, before it
    assert [len(a) for a in allowed] == [K, 1, K, 1, V, WIDTH]
    assert (allowed[1], allowed[3]) == ({EOF}, {EOV})


def test_text_only_in_hf_generate_never_yields_a_vision_id():
    model = tiny_lm()
    config = model.config
    with torch.no_grad():  # make vision ids the model's favourites, so the mask has work to do
        model.vision_head.weight.mul_(50)
    prompt = torch.tensor([[1, 5, 6, 7]])
    unconstrained = model.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None)
    assert (unconstrained[0, 4:] >= config.vocab_size).any()
    torch.manual_seed(0)  # HF generate samples with the global generator
    output = model.generate(
        prompt.expand(4, -1),
        max_new_tokens=40,
        do_sample=True,
        eos_token_id=None,
        logits_processor=LogitsProcessorList([TextOnlyLogitsProcessor(config.vocab_size)]),
    )
    assert (output[:, 4:] < config.vocab_size).all()


def test_frame_structure_in_hf_generate():
    model = tiny_lm()
    config = model.config
    layout = FrameLayout.from_config(config, 4)
    with torch.no_grad():  # reserved vision ids and text become the model's favourites
        model.vision_head.weight[config.num_vision_codes :].mul_(80)
        model.lm_head.weight.mul_(40)
    prompt = torch.tensor([[1, 5, 6, 7, 8], [1, 9, 10, 11, 12]])
    num_frames = 3
    torch.manual_seed(0)
    output = model.generate(
        prompt,
        max_new_tokens=num_frames * layout.frame_length + 6,
        do_sample=True,
        eos_token_id=None,
        logits_processor=LogitsProcessorList([FrameStructureLogitsProcessor(layout, num_frames, prompt.shape[1])]),
    )
    block = output[:, prompt.shape[1] : prompt.shape[1] + num_frames * layout.frame_length]
    frames = block.unflatten(1, (num_frames, layout.frame_length))
    codes = frames[..., :-1]
    assert ((codes >= config.vocab_size) & (codes < config.vocab_size + config.num_vision_codes)).all()
    assert (frames[:, :-1, -1] == layout.eof_token_id).all() and (frames[:, -1, -1] == layout.eov_token_id).all()
    assert (output[:, prompt.shape[1] + block.shape[1] :] < config.vocab_size).all()
