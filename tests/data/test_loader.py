"""The streaming loader: exact resume, disjoint and covering dp shards, task mixture; its whole rows cut
into zigzag sp shards by the trainer (`lwm.training.model_inputs`)."""

import json
import random

import numpy as np
import pytest
import torch

from lwm import media
from lwm.data import ExampleStream, PackedLoader, TokenizeConfig, TokenizedDataset, tokenize_manifest
from lwm.model import vision_grid_ids_of
from lwm.parallel import Mesh, shard_sequence
from lwm.tokenizers import VQGAN, VQGANConfig, train_text_tokenizer
from lwm.training import model_inputs
from tests.helpers.tiny import tiny_lm

WORDS = "a red blue ball square moves left right up down the of and".split()


def tokenized(root, records):
    """`records` through the real `lwm data tokenize` path, with a tiny text tokenizer and a tiny random VQGAN."""
    rng = random.Random(0)
    (root / "corpus.txt").write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(300)))
    train_text_tokenizer([str(root / "corpus.txt")], 300, str(root / "tokenizer"))
    VQGAN(VQGANConfig.from_preset("tiny", kmeans_init=False)).save_pretrained(root / "vqgan")
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(record) for record in records))
    config = TokenizeConfig(str(root / "manifest.jsonl"), str(root / "out"), str(root / "tokenizer"), str(root / "vqgan"),
                            shard_size=16)
    tokenize_manifest(config, progress=False)
    return TokenizedDataset(root / "out")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """60 text documents of varied lengths in three tasks."""
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 40))) for _ in range(60)]
    records = [{"text": text, "task": "abc"[i % 3]} for i, text in enumerate(texts)]
    return tokenized(tmp_path_factory.mktemp("loader"), records)


def take(loader, count):
    return [next(loader) for _ in range(count)]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


@pytest.mark.parametrize("stop_after", [1, 4])
@pytest.mark.parametrize("vision_noise", [0.0, 0.5])
def test_restore_continues_with_identical_batches(dataset, stop_after, vision_noise):
    settings = dict(seq_len=48, batch_size=3, seed=7, task_weights={"a": 1.0, "b": 2.0, "c": 1.0},
                    vision_noise=vision_noise)
    uninterrupted = take(PackedLoader(dataset, **settings), stop_after + 5)

    interrupted = PackedLoader(dataset, **settings)
    assert_same_batches(take(interrupted, stop_after), uninterrupted[:stop_after])
    state = json.loads(json.dumps(interrupted.state_dict()))  # survives a checkpoint file
    restored = PackedLoader(dataset, **settings)
    restored.load_state_dict(state)
    assert_same_batches(take(restored, 5), uninterrupted[stop_after:])


def test_different_seeds_shuffle_differently(dataset):
    first = next(PackedLoader(dataset, seq_len=48, batch_size=2, seed=0))["input_ids"]
    second = next(PackedLoader(dataset, seq_len=48, batch_size=2, seed=1))["input_ids"]
    assert not torch.equal(first, second)


def test_dp_shards_are_disjoint_and_cover_an_epoch(dataset):
    members = np.flatnonzero(dataset.tasks == "a").tolist()  # 20 examples
    for world in (1, 2, 4, 5):  # an epoch splits evenly: each rank 20 / world, together all 20 exactly once
        streams = [ExampleStream(dataset.tasks, {"a": 1.0}, seed=3, dp_rank=r, dp_size=world) for r in range(world)]
        assert sorted(next(stream) for stream in streams for _ in range(20 // world)) == members
    # 3 ranks, 7 draws each: the epoch is covered and only the one draw beyond it (epoch 2) repeats
    streams = [ExampleStream(dataset.tasks, {"a": 1.0}, seed=3, dp_rank=r, dp_size=3) for r in range(3)]
    flat = [next(stream) for stream in streams for _ in range(7)]
    assert set(flat) == set(members) and len(flat) - len(set(flat)) == 1


def test_dp_shards_of_a_mixture_partition_the_single_process_stream(dataset):
    world, draws = 3, 5  # few enough draws that no task's 20 examples run out
    ranks = [ExampleStream(dataset.tasks, seed=5, dp_rank=r, dp_size=world) for r in range(world)]
    per_rank = [[next(stream) for _ in range(draws)] for stream in ranks]
    flat = [index for rank in per_rank for index in rank]
    assert len(set(flat)) == len(flat)  # disjoint
    # all ranks pick the same tasks in the same order, and rank r takes the task's examples r, r + W, ...
    # of the one-process stream: together, exactly its first W * (draws of that task) examples
    single = ExampleStream(dataset.tasks, seed=5)
    reference = [next(single) for _ in range(300)]
    for task in "abc":
        counts = {sum(dataset.tasks[i] == task for i in rank) for rank in per_rank}
        assert len(counts) == 1
        expected = [i for i in reference if dataset.tasks[i] == task][: world * counts.pop()]
        assert sorted(i for i in flat if dataset.tasks[i] == task) == sorted(expected)


def test_task_weights(dataset):
    stream = ExampleStream(dataset.tasks, {"a": 1.0, "b": 0.0, "c": 3.0}, seed=0)
    drawn = dataset.tasks[[next(stream) for _ in range(2000)]]
    assert "b" not in drawn
    assert abs((drawn == "c").mean() - 0.75) < 0.04
    with pytest.raises(ValueError, match="does not have"):
        ExampleStream(dataset.tasks, {"z": 1.0})


def test_zigzag_sequence_parallel_shards(dataset):
    batch = next(PackedLoader(dataset, seq_len=48, batch_size=2, seed=1))
    model = tiny_lm()
    sp = lambda rank, world: Mesh(rank, world, world, None)  # noqa: E731  (rank's place in one sp group)
    assert shard_sequence(torch.arange(8), 0, 0, 2).tolist() == [0, 1, 6, 7]
    assert shard_sequence(torch.arange(8), 0, 1, 2).tolist() == [2, 3, 4, 5]
    world = 3
    shards = [model_inputs(batch, model, sp(rank, world)) for rank in range(world)]
    chunk = 48 // (2 * world)
    for key in ("input_ids", "segment_ids", "position_ids"):
        rebuilt = torch.empty_like(batch[key])
        for rank, shard in enumerate(shards):
            rebuilt[:, rank * chunk : (rank + 1) * chunk] = shard[key][:, :chunk]
            rebuilt[:, (2 * world - 1 - rank) * chunk : (2 * world - rank) * chunk] = shard[key][:, chunk:]
        assert torch.equal(rebuilt, batch[key])
    # shift labels: position t carries labels[t + 1] of the same document, computed before cutting
    full = model_inputs(batch, model, sp(0, 1))
    same_document = batch["segment_ids"][:, 1:] == batch["segment_ids"][:, :-1]
    expected = torch.where(same_document, batch["labels"][:, 1:], -100)
    assert torch.equal(full["shift_labels"][:, :-1], expected) and full["shift_labels"][:, -1].eq(-100).all()
    assert torch.equal(full["loss_weights"][:, :-1], torch.where(same_document, batch["loss_weights"][:, 1:], 0.0))
    odd = next(PackedLoader(dataset, seq_len=50, batch_size=1, seed=1))
    with pytest.raises(ValueError, match="cannot be cut into 4 equal chunks"):
        model_inputs(odd, model, sp(0, 2))


def test_sequence_parallel_batches_carry_the_places_of_codes_counted_on_whole_rows(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    for index, image in enumerate(pixels):
        media.save_image(image, tmp_path / f"{index}.png")
    images = tokenized(tmp_path, [{"image": str(tmp_path / f"{index}.png"), "caption": "a red ball", "task": "image"}
                                  for index in range(4)])
    whole = next(PackedLoader(images, seq_len=96, batch_size=2, seed=1))
    codes, grid = images.index["codebook_size"], round(images.index["codes_per_frame"] ** 0.5)
    model = tiny_lm(vocab_size=images.text_vocab_size, num_vision_codes=codes, vision_vocab_size=codes + 2,
                    vision_grid_size=grid)
    grid_ids = vision_grid_ids_of(whole["input_ids"], images.text_vocab_size, codes)
    assert grid_ids.max() > 0  # the rows hold frames
    for rank in range(2):
        shard = model_inputs(whole, model, Mesh(rank, 2, 2, None))
        assert torch.equal(shard["vision_grid_ids"], shard_sequence(grid_ids, 1, rank, 2))
        assert torch.equal(shard["input_ids"], shard_sequence(whole["input_ids"], 1, rank, 2))


def test_batches_are_packed_rows(dataset):
    batch = next(PackedLoader(dataset, seq_len=48, batch_size=4, seed=2))
    assert batch["input_ids"].shape == (4, 48)
    assert set(batch) == {"input_ids", "labels", "loss_weights", "segment_ids", "position_ids"}
    assert (batch["segment_ids"].amax(1) >= 1).all()
