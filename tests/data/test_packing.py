"""Masked sequence packing: boundaries, re-weighting, and equivalence with running examples alone."""

import numpy as np
import pytest
import torch

from lwm.data.packing import RowPlanner, VisionNoise, pack_row, stack_rows
from lwm.model import LWMConfig, LWMForCausalLM

TEXT_VOCAB = 512  # the "tiny" model preset's text vocabulary
VISION_IDS = 258  # its 256 codes + <eof>/<eov>


def make_example(rng, length, modalities=("text", "vision")):
    """Text tokens, then (optionally) a vision block, with a prompt that is not trained."""
    kinds = rng.choice(len(modalities), size=length)
    ids = np.where(
        np.array(modalities)[kinds] == "vision",
        rng.integers(TEXT_VOCAB, TEXT_VOCAB + VISION_IDS, size=length),
        rng.integers(3, TEXT_VOCAB, size=length),
    )
    ids[0] = 1
    mask = np.ones(length, dtype=np.uint8)
    mask[: max(1, length // 3)] = 0  # prompt
    return ids, mask


def examples_with(seed, lengths, modalities=("text", "vision")):
    rng = np.random.default_rng(seed)
    return [make_example(rng, n, modalities) for n in lengths]


def test_row_layout_and_weights():
    examples = examples_with(0, [5, 9, 4])
    row = pack_row(examples, 24, TEXT_VOCAB)
    assert row["segment_ids"].tolist() == [1] * 5 + [2] * 9 + [3] * 4 + [0] * 6
    assert row["position_ids"].tolist() == list(range(5)) + list(range(9)) + list(range(4)) + [0] * 6
    assert row["input_ids"][18:].eq(0).all() and row["labels"][18:].eq(-100).all() and row["loss_weights"][18:].eq(0).all()
    starts = [0, 5, 14]
    for start, (ids, mask) in zip(starts, examples):
        labels = row["labels"][start : start + len(ids)]
        weights = row["loss_weights"][start : start + len(ids)]
        assert labels[0] == -100  # nothing in the document predicts its first token
        trained = mask.astype(bool)
        trained[0] = False
        assert labels.tolist() == np.where(trained, ids, -100).tolist()
        for in_modality in (trained & (ids < TEXT_VOCAB), trained & (ids >= TEXT_VOCAB)):
            if in_modality.any():  # each example's targets of a modality weigh 1 in total
                assert weights[torch.from_numpy(in_modality)].sum().item() == pytest.approx(1.0)
                assert torch.unique(weights[torch.from_numpy(in_modality)]).numel() == 1
        assert weights[torch.from_numpy(~trained)].eq(0).all()


def test_prompt_vision_can_be_trained_too():
    examples = examples_with(1, [12, 10])
    plain, with_prompt_vision = (pack_row(examples, 24, TEXT_VOCAB, train_prompt_vision=on) for on in (False, True))
    start = 0
    for ids, mask in examples:
        span = slice(start, start + len(ids))
        is_vision = ids >= TEXT_VOCAB
        trained = mask.astype(bool) | is_vision
        trained[0] = False
        assert with_prompt_vision["labels"][span].tolist() == np.where(trained, ids, -100).tolist()
        prompt_vision = torch.from_numpy(is_vision & ~mask.astype(bool))
        prompt_vision[0] = False
        assert prompt_vision.any() and plain["labels"][span][prompt_vision].eq(-100).all()
        text = torch.from_numpy(trained & ~is_vision)  # text targets keep their weights
        assert torch.equal(with_prompt_vision["loss_weights"][span][text], plain["loss_weights"][span][text])
        assert with_prompt_vision["loss_weights"][span][torch.from_numpy(trained & is_vision)].sum().item() == pytest.approx(1.0)
        start += len(ids)


def test_vision_noise_changes_what_the_model_reads_not_what_it_learns():
    examples = examples_with(2, [300, 200])
    codes = VISION_IDS - 2  # the last two vision ids are <eof> and <eov>, never replaced
    clean = pack_row(examples, 512, TEXT_VOCAB)
    noisy = pack_row(examples, 512, TEXT_VOCAB, noise=VisionNoise(0.3, codes, np.random.default_rng(0)))
    for key in ("labels", "loss_weights", "segment_ids", "position_ids"):
        assert torch.equal(noisy[key], clean[key]), key
    changed = noisy["input_ids"] != clean["input_ids"]
    is_code = (clean["input_ids"] >= TEXT_VOCAB) & (clean["input_ids"] < TEXT_VOCAB + codes)
    assert not (changed & ~is_code).any()  # text, delimiters and padding stay
    assert 0.15 < changed.sum() / is_code.sum() < 0.3  # replaced at 0.3, some by an equal code
    start = 0
    for ids, _ in examples:  # a replacement is a code of the same document
        span = slice(start, start + len(ids))
        own = set(clean["input_ids"][span][is_code[span]].tolist())
        assert set(noisy["input_ids"][span][changed[span]].tolist()) <= own
        start += len(ids)


def test_allowed_attention_never_crosses_a_boundary():
    examples = examples_with(1, [7, 3, 11, 6])
    row = pack_row(examples, 32, TEXT_VOCAB)
    segments = row["segment_ids"]
    owner = np.repeat(np.arange(len(examples)), [len(ids) for ids, _ in examples])
    allowed = (segments[:, None] == segments[None, :]) & (segments[:, None] > 0)
    allowed &= torch.ones(32, 32, dtype=torch.bool).tril()
    query, key = torch.nonzero(allowed, as_tuple=True)
    assert (owner[query.numpy()] == owner[key.numpy()]).all()
    assert allowed.sum() == sum(n * (n + 1) // 2 for n in (7, 3, 11, 6))


def test_planner_first_fit_truncate_drop_and_state():
    planner = RowPlanner(seq_len=10, overlong="truncate", open_rows=2)
    closed = []
    for key, length in enumerate([6, 6, 3, 12, 4, 1]):
        closed += planner.add(key, length)
    # 6 -> row A; 6 -> row B; 3 -> A (9); 12 truncated -> closes A, new row; 4 -> B (10); 1 -> nothing fits
    assert closed == [[(0, 6), (2, 3)], [(1, 6), (4, 4)]]
    assert planner.truncated == 1
    state = planner.state_dict()
    restored = RowPlanner(seq_len=10, overlong="truncate", open_rows=2)
    restored.load_state_dict(state)
    assert restored.flush() == planner.flush() == [[(3, 10)], [(5, 1)]]
    dropping = RowPlanner(seq_len=10, overlong="drop")
    assert dropping.add(0, 11) == [] and dropping.dropped == 1 and dropping.flush() == []


def tiny_model(backend):
    torch.manual_seed(0)
    return LWMForCausalLM(LWMConfig.from_preset("tiny", attn_implementation=backend)).eval()


def run_alone(model, ids, mask):
    ids = torch.as_tensor(ids)[None]
    labels = torch.where(torch.as_tensor(mask, dtype=torch.bool)[None], ids, -100)
    with torch.no_grad():
        return model(input_ids=ids, labels=labels)


def run_packed(model, batch, **kwargs):
    with torch.no_grad():
        inputs = {key: batch[key] for key in ("input_ids", "labels", "loss_weights", "position_ids", "segment_ids")}
        return model(**inputs, **kwargs)


def packed_logits(model, batch):
    with torch.no_grad():
        return model(**{key: batch[key] for key in ("input_ids", "position_ids", "segment_ids")}).logits


@pytest.mark.parametrize("backend", ["sdpa", "blockwise"])
def test_packed_rows_equal_examples_run_alone(backend):
    model = tiny_model(backend)
    rows = [examples_with(2, [13, 20, 9, 15]), examples_with(3, [30, 21, 12])]
    batch = stack_rows([pack_row(examples, 64, TEXT_VOCAB) for examples in rows])
    packed, logits = run_packed(model, batch), packed_logits(model, batch)

    alone = []
    for row, examples in enumerate(rows):
        start = 0
        for ids, mask in examples:
            out = run_alone(model, ids, mask)
            with torch.no_grad():
                logits_alone = model(input_ids=torch.as_tensor(ids)[None]).logits
            torch.testing.assert_close(logits[row, start : start + len(ids)], logits_alone[0], atol=2e-5, rtol=1e-4)
            alone.append(out)
            start += len(ids)
    # every example has targets in both modalities: the batch loss is the mean of the examples' own losses
    for name in ("loss", "text_loss", "vision_loss"):
        expected = torch.stack([getattr(out, name) for out in alone]).mean()
        torch.testing.assert_close(getattr(packed, name), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "blockwise"])
def test_mixed_modalities_reweighting(backend):
    """Text-only examples beside multimodal ones: each modality's loss is the mean over the examples that
    have it; with loss_denominators = (examples, examples) the loss is the mean of the examples' losses."""
    model = tiny_model(backend)
    examples = examples_with(4, [18, 11], ("text",)) + examples_with(5, [25], ("text", "vision"))
    batch = stack_rows([pack_row(examples, 64, TEXT_VOCAB)])
    alone = [run_alone(model, ids, mask) for ids, mask in examples]
    packed = run_packed(model, batch)
    torch.testing.assert_close(packed.text_loss, torch.stack([o.text_loss for o in alone]).mean(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(packed.vision_loss, alone[2].vision_loss, atol=1e-6, rtol=1e-5)
    count = torch.tensor(float(len(examples)))
    packed = run_packed(model, batch, loss_denominators=(count, count))
    torch.testing.assert_close(packed.loss, torch.stack([o.loss for o in alone]).mean(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "blockwise"])
def test_no_position_sees_another_document(backend):
    model = tiny_model(backend)
    examples = examples_with(6, [20, 24, 12])
    row = pack_row(examples, 64, TEXT_VOCAB)
    changed = [examples[0], examples_with(7, [24])[0], examples[2]]  # replace the middle document
    before = packed_logits(model, stack_rows([row]))[0]
    after = packed_logits(model, stack_rows([pack_row(changed, 64, TEXT_VOCAB)]))[0]
    torch.testing.assert_close(before[:20], after[:20], atol=0, rtol=0)
    torch.testing.assert_close(before[44:56], after[44:56], atol=2e-5, rtol=1e-4)
    assert not torch.allclose(before[20:44], after[20:44])


def test_too_many_tokens_for_a_row_is_an_error():
    with pytest.raises(ValueError, match="more than the row length 8"):
        pack_row(examples_with(0, [5, 5]), 8, TEXT_VOCAB)
