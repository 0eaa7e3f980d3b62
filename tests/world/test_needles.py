"""Needle in a haystack: lengths by any counter, needles at their depths, deterministic by seed."""

import json
import re
from pathlib import Path

import pytest

from lwm.data.manifest import parse_record
from lwm.world import needles


def count_words(text: str) -> int:
    """A stand-in tokenizer: one token per word or punctuation mark."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def test_same_seed_same_example_and_seeds_differ():
    assert needles.make_example(2000, 0.3, seed=4) == needles.make_example(2000, 0.3, seed=4)
    assert needles.make_example(2000, 0.3, seed=4).context != needles.make_example(2000, 0.3, seed=5).context


@pytest.mark.parametrize("count", [len, count_words], ids=["characters", "words"])
@pytest.mark.parametrize("length", [300, 1000, 5000])
def test_context_is_the_longest_that_fits(count, length):
    example = needles.make_example(length, 0.5, seed=1, count=count)
    assert count(example.context) <= length
    # One more filler sentence would not fit: the context is within one sentence of the length.
    longest_sentence = max(count(s) for s in needles.haystack(10 * length, seed=1, count=count).split(". "))
    assert count(example.context) > length - longest_sentence - 2


def test_lengths_scale_for_1x_2x_4x():
    trained = 2000
    examples = [needles.make_example(k * trained, 0.5, seed=3, count=count_words) for k in (1, 2, 4)]
    for k, example in zip((1, 2, 4), examples):
        assert 0.95 * k * trained < count_words(example.context) <= k * trained
    assert len({e.answer for e in examples}) == 1  # the same needle, hidden in more hay


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_the_needle_sits_at_its_depth(depth):
    example = needles.make_example(20_000, depth, seed=2)
    (hidden,) = example.needles
    position = example.context.index(hidden.sentence)
    assert abs(position / len(example.context) - depth) < 0.01
    assert example.question == f"What is the special magic number for {hidden.key}?"
    assert example.answer == hidden.value and len(hidden.value) == 7


def test_multiple_needles():
    example = needles.make_example(10_000, [0.1, 0.5, 0.9], seed=7, ask=2)
    keys = [n.key for n in example.needles]
    assert len(set(keys)) == 3
    positions = [example.context.index(n.sentence) for n in example.needles]
    assert positions == sorted(positions)
    assert example.question.endswith(f"for {keys[2]}?") and example.answer == example.needles[2].value
    assert example.context.count("special magic number") == 3


def test_asked_for_all_needles_every_number_must_be_in_the_reply():
    example = needles.make_example(3000, [0.2, 0.8], seed=5, ask="all")
    first, second = example.needles
    assert example.asks_all and example.question == f"What are the special magic numbers for {first.key} and {second.key}?"
    assert example.is_correct(f"{first.key}: {first.value}, {second.key}: {second.value}.")
    assert example.is_correct(example.answer)
    assert not example.is_correct(f"It is {first.value}.")
    assert needles.question_all(["Oslo", "Rome", "Kyoto"]) == "What are the special magic numbers for Oslo, Rome and Kyoto?"
    with pytest.raises(ValueError, match="'all'"):
        needles.make_example(3000, [0.2, 0.8], seed=5, ask=2)


def test_filler_has_no_numbers_and_haystack_fits():
    text = needles.haystack(5000, seed=0)
    assert len(text) <= 5000 and not re.search(r"\d", text)
    assert "special magic" not in text


def test_scoring_and_records():
    example = needles.make_example(500, 0.5, seed=0)
    assert example.is_correct(example.answer)
    assert example.is_correct(f"The number is {example.answer}.")
    assert not example.is_correct("I do not know")
    assert not example.is_correct(f"{int(example.answer) + 1}")
    record = example.to_record()
    parsed = parse_record(json.dumps(record), 1, Path("."))
    assert parsed.kind == "messages" and parsed.task == "needle"
    assert record["messages"][0]["content"][0]["text"] == example.prompt
    assert example.prompt.endswith(example.question)


def test_sweep_covers_the_grid():
    examples = needles.sweep([400, 800], [0.0, 0.5, 1.0], seeds=[0, 1], n_needles=2)
    assert len(examples) == 2 * 3 * 2
    for length, depth, example in examples:
        assert len(example.context) <= length and len(example.needles) == 2
        assert example.needles[0].depth == depth and example.answer == example.needles[0].value


@pytest.mark.parametrize("kwargs, error", [
    ({"length": 10}, "too short"),
    ({"length": 500, "depths": 1.5}, r"\[0, 1\]"),
    ({"length": 500, "depths": []}, "between 1"),
    ({"length": 500, "ask": 3}, "ask"),
    ({"length": -1}, "too short|non-negative"),
])
def test_bad_requests_are_refused_clearly(kwargs, error):
    with pytest.raises(ValueError, match=error):
        needles.make_example(**kwargs)
