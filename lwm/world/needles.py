"""Needle in a haystack: find a fact hidden at a chosen depth in a long filler text.

A haystack is procedural filler sentences ("The quiet river rests near the old mill."), deterministic
by seed and free of digits; a needle is "The special magic number for <key> is <number>." placed at a
depth in [0, 1] (0: the start, 1: the end). The question asks for the number of one needle's key.

Lengths are measured by a `count` callable (text -> int): `len` counts characters, a tokenizer's
`lambda text: len(tokenizer.encode(text))` counts tokens. The context is the longest haystack whose
count, needles included, is at most the asked length, so 1×, 2×, 4× a trained length are just three
lengths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence

import numpy as np

_ADJECTIVES = ("quiet", "old", "bright", "small", "tall", "green", "cold", "busy", "gentle", "dark",
               "wide", "narrow", "calm", "golden", "silent", "warm")
_NOUNS = ("river", "mill", "garden", "tower", "market", "forest", "bridge", "harbour", "valley", "meadow",
          "library", "village", "orchard", "lantern", "window", "road")
_VERBS = ("rests near", "stands beside", "looks over", "leans toward", "waits behind", "sleeps under",
          "shines above", "turns past")
_TEMPLATES = (
    "The {a1} {n1} {v} the {a2} {n2}.",
    "A {a1} {n1} {v} a {n2}.",
    "Every {n1} {v} the {a2} {n2} at dawn.",
    "In the {a1} {n1}, nothing {v} the {n2}.",
)

KEYS: tuple[str, ...] = (
    "Amsterdam", "Berlin", "Cairo", "Dublin", "Edinburgh", "Florence", "Geneva", "Havana", "Istanbul",
    "Jakarta", "Kyoto", "Lisbon", "Madrid", "Nairobi", "Oslo", "Paris", "Quito", "Rome", "Seoul",
    "Tokyo", "Utrecht", "Vienna", "Warsaw", "Zurich",
)

QUESTION = "What is the special magic number for {key}?"
QUESTION_ALL = "What are the special magic numbers for {keys}?"
NEEDLE = "The special magic number for {key} is {value}."


def question_all(keys: Sequence[str]) -> str:
    """The question asking for every needle, as RULER's multi-value variant asks: "... for Oslo and Rome?"."""
    named = keys[0] if len(keys) == 1 else f"{', '.join(keys[:-1])} and {keys[-1]}"
    return QUESTION_ALL.format(keys=named)


def filler_sentences(seed: int) -> Iterator[str]:
    """An endless stream of filler sentences, the same for the same seed."""
    rng = np.random.default_rng(seed)
    choices = [len(_TEMPLATES), len(_ADJECTIVES), len(_ADJECTIVES), len(_NOUNS), len(_NOUNS), len(_VERBS)]
    while True:
        for template, a1, a2, n1, n2, verb in rng.integers(0, choices, size=(256, len(choices))):
            yield _TEMPLATES[template].format(a1=_ADJECTIVES[a1], a2=_ADJECTIVES[a2], n1=_NOUNS[n1],
                                              n2=_NOUNS[n2], v=_VERBS[verb])


def haystack(length: int, seed: int = 0, count: Callable[[str], int] = len) -> str:
    """The longest filler text of the seed's sentences whose `count` is at most `length`."""
    return _fit(length, seed, count, needles=())


@dataclass(frozen=True)
class Needle:
    key: str
    value: str
    depth: float  # where it sits, 0 = before all filler, 1 = after all filler

    @property
    def sentence(self) -> str:
        return NEEDLE.format(key=self.key, value=self.value)


@dataclass(frozen=True)
class NeedleExample:
    context: str  # the haystack with the needles
    question: str
    answer: str  # the asked number, or with `asks_all` every needle's number, in order, comma-separated
    needles: tuple[Needle, ...]
    asks_all: bool = False

    @property
    def prompt(self) -> str:
        """Context and question as one user message."""
        return f"{self.context}\n\n{self.question}"

    def to_record(self, task: str = "needle") -> dict:
        """A manifest record (lwm.data.manifest) that trains answering the question."""
        return {"messages": [
            {"role": "user", "content": [{"type": "text", "text": self.prompt}]},
            {"role": "assistant", "content": [{"type": "text", "text": self.answer}]},
        ], "task": task}

    def is_correct(self, prediction: str) -> bool:
        """Whether the first number in `prediction` is the answer; asked for all, whether every needle's
        number is among the numbers of `prediction`."""
        numbers = re.findall(r"\d+", prediction)
        if self.asks_all:
            return {needle.value for needle in self.needles} <= set(numbers)
        return bool(numbers) and numbers[0] == self.answer


def make_example(length: int, depths: float | Sequence[float] = 0.5, seed: int = 0,
                 count: Callable[[str], int] = len, digits: int = 7, ask: int | Literal["all"] | None = None
                 ) -> NeedleExample:
    """A haystack of at most `length` (by `count`) with one needle per depth, and a question about one of them.

    Keys and numbers are drawn from `seed` (distinct keys); `ask` picks the needle the question is
    about (default: drawn from the seed), or "all" asks for every needle's number. The filler depends
    on the seed only, so one seed at two lengths gives the same keys, numbers and filler sentences,
    only more of them.
    """
    depths = [depths] if isinstance(depths, (int, float)) else list(depths)
    if not depths or len(depths) > len(KEYS):
        raise ValueError(f"need between 1 and {len(KEYS)} needle depths, got {len(depths)}")
    if any(not 0.0 <= depth <= 1.0 for depth in depths):
        raise ValueError(f"needle depths must lie in [0, 1], got {depths}")
    if digits < 1:
        raise ValueError(f"digits must be at least 1, got {digits}")
    rng = np.random.default_rng([seed, 1])
    keys = rng.choice(len(KEYS), size=len(depths), replace=False)
    needles = tuple(
        Needle(KEYS[key], str(rng.integers(10 ** (digits - 1), 10**digits)), float(depth))
        for key, depth in zip(keys, depths)
    )
    context = _fit(length, seed, count, needles)
    if ask == "all":
        answer = ", ".join(needle.value for needle in needles)
        return NeedleExample(context, question_all([needle.key for needle in needles]), answer, needles, asks_all=True)
    ask = int(rng.integers(len(needles))) if ask is None else ask
    if not 0 <= ask < len(needles):
        raise ValueError(f"ask must index one of the {len(needles)} needles or be 'all', got {ask!r}")
    return NeedleExample(context, QUESTION.format(key=needles[ask].key), needles[ask].value, needles)


def _assemble(filler: list[str], needles: Sequence[Needle]) -> str:
    """The filler sentences with each needle inserted before sentence round(depth · len(filler))."""
    sentences = list(filler)
    # Insert from the deepest so earlier insertions do not shift later positions.
    for needle in sorted(needles, key=lambda n: n.depth, reverse=True):
        sentences.insert(round(needle.depth * len(filler)), needle.sentence)
    return " ".join(sentences)


def _fit(length: int, seed: int, count: Callable[[str], int], needles: Sequence[Needle]) -> str:
    """The text of the most filler sentences that, with the needles, counts at most `length`.

    The number of sentences doubles until the text is too long, then a binary search finds the most
    that fit: `count` runs on whole texts (a tokenizer may count a text differently from the sum of
    its sentences), O(log n) times.
    """
    if length < 0:
        raise ValueError(f"length must be non-negative, got {length}")
    if count(_assemble([], needles)) > length:
        raise ValueError(f"length {length} is too short even for the needles alone")
    stream = filler_sentences(seed)
    filler = [next(stream)]
    while count(_assemble(filler, needles)) <= length:
        filler += [next(stream) for _ in filler]
    low, high = 0, len(filler)  # the text of `low` sentences fits; of `high`, it does not
    while high - low > 1:
        middle = (low + high) // 2
        if count(_assemble(filler[:middle], needles)) <= length:
            low = middle
        else:
            high = middle
    return _assemble(filler[:low], needles)


def sweep(lengths: Sequence[int], depths: Sequence[float], seeds: Sequence[int], count: Callable[[str], int] = len,
          n_needles: int = 1, digits: int = 7, ask_all: bool = False) -> list[tuple[int, float, NeedleExample]]:
    """Examples for an accuracy heat-map: (length, depth, example) for every length × depth × seed.

    With `n_needles` > 1, the other needles sit at depths spread evenly and the question asks about
    the one at `depth`, or with `ask_all` about every needle.
    """
    examples = []
    for length in lengths:
        for depth in depths:
            for seed in seeds:
                others = [(i + 0.5) / (n_needles - 1) for i in range(n_needles - 1)]
                example = make_example(length, [depth] + others, seed, count, digits, ask="all" if ask_all else 0)
                examples.append((length, depth, example))
    return examples
