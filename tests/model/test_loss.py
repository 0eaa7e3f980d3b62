"""The chunked, per-head loss equals LWM's loss over the whole [text | vision] logits, in float64."""

import pytest
import torch

from lwm.model import IGNORE_INDEX, lwm_loss, modality_weights, next_token_targets
from lwm.model import loss as loss_module
from tests.helpers.tiny import tiny_lm

TEXT_VOCAB, VISION_VOCAB, HIDDEN = 11, 7, 6


def reference_loss(logits, targets, weights, text_vocab, denominators=None):
    """The loss as it was before the heads were split: over the concatenated logits of both heads."""
    is_vision = targets >= text_vocab
    target_logits = logits.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    half_lse = torch.where(
        is_vision, torch.logsumexp(logits[..., text_vocab:], dim=-1), torch.logsumexp(logits[..., :text_vocab], dim=-1)
    )
    ce = half_lse - target_logits
    losses = []
    for index, selected_weights in enumerate(modality_weights(targets, weights, text_vocab)):
        numerator = (ce * selected_weights).sum()
        denominator = selected_weights.sum() if denominators is None else denominators[index]
        losses.append(numerator / denominator if float(denominator) > 0 else numerator * 0.0)
    text_loss, vision_loss = losses
    return 0.5 * (text_loss + vision_loss), text_loss, vision_loss


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """A few positions per chunk, so every case runs over several chunks and a ragged last one."""
    monkeypatch.setattr(loss_module, "CHUNK_POSITIONS", 5)


def problem(seed=0, batch=2, length=13, vision=True, text=True):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, HIDDEN, dtype=torch.float64, generator=generator, requires_grad=True)
    heads = [torch.randn(vocab, HIDDEN, dtype=torch.float64, generator=generator, requires_grad=True)
             for vocab in (TEXT_VOCAB, VISION_VOCAB)]
    text_ids = torch.randint(0, TEXT_VOCAB, (batch, length), generator=generator)
    vision_ids = TEXT_VOCAB + torch.randint(0, VISION_VOCAB, (batch, length), generator=generator)
    choose_vision = torch.rand(batch, length, generator=generator) < (0.5 if text and vision else float(vision))
    targets = torch.where(choose_vision, vision_ids, text_ids)
    targets[torch.rand(batch, length, generator=generator) < 0.2] = IGNORE_INDEX
    weights = torch.rand(batch, length, generator=generator, dtype=torch.float64) + 0.5
    weights[0, 3] = 0.0  # a valid target with no weight
    return hidden, heads, targets, weights


def reference_of(hidden, heads, targets, weights, denominators=None):
    logits = torch.cat([hidden @ heads[0].T, hidden @ heads[1].T], dim=-1)
    return reference_loss(logits, targets, weights, TEXT_VOCAB, denominators)


def gradients(losses, inputs):
    return torch.autograd.grad(losses[0], inputs)


@pytest.mark.parametrize("with_weights", [True, False])
def test_loss_and_gradients_equal_the_full_logits_loss(with_weights):
    hidden, heads, targets, weights = problem()
    weights = weights if with_weights else None
    got, want = lwm_loss(hidden, *heads, targets, weights), reference_of(hidden, heads, targets, weights)
    for name, ours, theirs in zip(("loss", "text", "vision"), got, want):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")
    for ours, theirs in zip(gradients(got, [hidden, *heads]), gradients(want, [hidden, *heads])):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_each_modality_loss_has_its_own_gradient():
    hidden, heads, targets, weights = problem(seed=1)
    got, want = lwm_loss(hidden, *heads, targets, weights), reference_of(hidden, heads, targets, weights)
    for index in (1, 2):  # text_loss and vision_loss backpropagate on their own too
        ours = torch.autograd.grad(got[index], [hidden, *heads], allow_unused=True, materialize_grads=True, retain_graph=True)
        theirs = torch.autograd.grad(want[index], [hidden, *heads], allow_unused=True, materialize_grads=True, retain_graph=True)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("present", ["text", "vision"])
def test_a_modality_without_targets_adds_zero_and_a_zero_gradient(present):
    hidden, heads, targets, weights = problem(seed=2, text=present == "text", vision=present == "vision")
    got, want = lwm_loss(hidden, *heads, targets, weights), reference_of(hidden, heads, targets, weights)
    absent = 2 if present == "text" else 1
    assert got[absent].item() == 0.0
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    grads = gradients(got, [hidden, *heads])
    for ours, theirs in zip(grads, gradients(want, [hidden, *heads])):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    assert grads[absent].abs().max() == 0  # the absent head gets a gradient, all zero


def test_shards_with_global_denominators_add_up_to_the_whole_batch():
    """Sequence-parallel shards: each sees its slice of the targets and the whole batch's weight sums."""
    hidden, heads, targets, weights = problem(seed=3, length=16)
    denominators = tuple(selected.sum() for selected in modality_weights(targets, weights, TEXT_VOCAB))
    whole = reference_of(hidden, heads, targets, weights)
    shards = [lwm_loss(hidden[:, part], *heads, targets[:, part], weights[:, part], denominators)
              for part in (slice(0, 8), slice(8, 16))]
    for index in range(3):
        torch.testing.assert_close(sum(shard[index] for shard in shards), whole[index], rtol=1e-12, atol=1e-12)
    summed = [sum(parts) for parts in zip(*(gradients(shard, [hidden, *heads]) for shard in shards))]
    for ours, theirs in zip(summed, gradients(whole, [hidden, *heads])):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_without_gradients_the_loss_is_the_same():
    hidden, heads, targets, weights = problem(seed=4)
    with torch.no_grad():
        got = lwm_loss(hidden, *heads, targets, weights)
    torch.testing.assert_close(got[0], reference_of(hidden, heads, targets, weights)[0], rtol=1e-12, atol=1e-12)


def test_model_loss_on_packed_rows_equals_the_full_logits_loss():
    """Through the model: packed rows (segment_ids), loss weights, float64; the loss and every
    parameter's gradient equal today's loss over the logits of a forward without labels."""
    model = tiny_lm("sdpa").double().train()
    config = model.config
    generator = torch.Generator().manual_seed(5)
    ids = torch.randint(3, config.vocab_size, (2, 40), generator=generator)
    ids[:, 10:30] = config.vocab_size + torch.randint(0, config.num_vision_codes, (2, 20), generator=generator)
    segments = torch.tensor([[1] * 17 + [2] * 23, [1] * 33 + [2] * 7])
    loss_weights = torch.rand(2, 40, generator=generator, dtype=torch.float64) + 0.5
    labels = ids.masked_fill(torch.rand(2, 40, generator=generator) < 0.1, IGNORE_INDEX)

    out = model(ids, labels=labels, loss_weights=loss_weights, segment_ids=segments)
    assert out.logits is None
    got = torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True)
    targets, weights = next_token_targets(labels, segments, loss_weights)
    want_loss = reference_loss(model(ids, segment_ids=segments).logits, targets, weights, config.vocab_size)[0]
    want = torch.autograd.grad(want_loss, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(out.loss, want_loss, rtol=1e-12, atol=1e-12)
    for (name, _), ours, theirs in zip(model.named_parameters(), got, want):
        if theirs is None:
            assert ours is None, name
            continue
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")
