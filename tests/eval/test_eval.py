"""`lwm eval`: the harness is validated on the ground truth, and a random model cannot pass its bars.

A subject that returns the world's own answers, captions, clips and futures must score perfectly
(so every scorer reads real outputs correctly); the tiny random model runs the whole CLI end to end,
writes the report and PNGs, and fails a video QA bar of 0.5.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from lwm import world
from lwm.cli import main as lwm_main
from lwm.eval import bars, needle, report
from lwm.eval.world import (
    WorldEvalConfig,
    at_world_size,
    continuation_case,
    evaluate_world,
    held_out_clips,
)
from lwm.tokenizers import CAPTION_REQUESTS
from lwm.world import needles

CONFIG = WorldEvalConfig(seeds=3, video_frames=6, context_frames=4, continuation_frames=3)


class GroundTruth:
    """A subject that knows the world: it answers, draws and continues with the truth."""

    def __init__(self, clips: list[world.Clip], config: WorldEvalConfig):
        self.clips = {clip.frames.tobytes(): clip for clip in clips}
        self.futures = {}
        for clip in clips:
            context, future = continuation_case(clip, config)
            self.futures[context.frames.tobytes()] = future

    def answer(self, frames, questions, max_new_tokens):
        clip = self.clips[frames.tobytes()]
        truth = {qa.question: qa.answer for qa in world.questions(clip)}
        truth[CAPTION_REQUESTS["video"]] = world.caption(clip)
        return [truth[question] for question in questions]

    def converse(self, frames, questions, max_new_tokens):
        return self.answer(frames, questions, max_new_tokens)

    def draw_image(self, prompt, seed):
        return world.clip_from_prompt(prompt, seed, n_frames=1).frames[0]

    def draw_video(self, prompt, num_frames, seed):
        return world.clip_from_prompt(prompt, seed, n_frames=num_frames).frames

    def continue_video(self, frames, num_frames, seed):
        return self.futures[frames.tobytes()].frames[:num_frames]


class StandingStill(GroundTruth):
    """Knows the world but never moves: continuations repeat the last frame."""

    def continue_video(self, frames, num_frames, seed):
        return np.repeat(frames[-1:], num_frames, axis=0)


@pytest.fixture(scope="module")
def clips():
    return held_out_clips(CONFIG.seeds)


def test_ground_truth_scores_perfectly(clips):
    results = evaluate_world(GroundTruth(clips, CONFIG), ["video_qa", "conversation", "caption", "text_to_image",
                                                         "text_to_video", "continuation"], CONFIG)
    qa = results["video_qa"].summary
    assert qa["metrics"]["accuracy"] == 1.0
    assert results["conversation"].summary["metrics"] == {"accuracy": 1.0, "first_turn.accuracy": 1.0,
                                                          "later_turns.accuracy": 1.0}
    assert qa["questions"] == sum(len(world.questions(clip)) for clip in clips)
    assert set(qa["by_type"]) <= set(world.QUESTION_TYPES) and sum(t["total"] for t in qa["by_type"].values()) == qa["questions"]
    assert qa["seeds"] == list(world.split_seeds("held_out", CONFIG.seeds))
    for task in ("caption", "text_to_image", "text_to_video"):
        summary = results[task].summary
        assert summary["metrics"]["accuracy"] == 1.0, (task, summary["samples"])
        assert summary["count"] == CONFIG.seeds
    assert {"colour", "shape", "direction"} <= set(results["text_to_video"].summary["checks"])
    assert "region" in results["text_to_image"].summary["checks"]
    continued = results["continuation"].summary["metrics"]
    assert continued["direction_kept"] == 1.0 and continued["found"] == 1.0
    assert continued["trajectory_error"] < 0.5
    assert continued["static_baseline.trajectory_error"] > 2  # every world object moves >= 2 px per frame
    assert len(results["text_to_video"].grid) == CONFIG.seeds


def test_scorers_reject_wrong_outputs(clips):
    wrong = StandingStill(clips, CONFIG)
    wrong.answer = lambda frames, questions, max_new_tokens: ["red or blue"] * len(questions)
    wrong.draw_video = lambda prompt, num_frames, seed: np.zeros((num_frames, 64, 64, 3), np.uint8)
    results = evaluate_world(wrong, ["video_qa", "text_to_video", "continuation"], CONFIG)
    assert results["video_qa"].summary["metrics"]["accuracy"] < 0.2
    assert results["text_to_video"].summary["metrics"]["accuracy"] == 0.0
    continued = results["continuation"].summary["metrics"]
    assert continued["direction_kept"] == 0.0 and continued["trajectory_error"] > 2


def test_majority_baseline_is_always_giving_the_most_common_answer(clips):
    results = evaluate_world(GroundTruth(clips, CONFIG), ["video_qa"], CONFIG)
    metrics = results["video_qa"].summary["metrics"]
    bounced = [obj.bounced for clip in clips for obj in clip.objects]
    assert metrics["bounce.majority_baseline"] == max(bounced.count(True), bounced.count(False)) / len(bounced)
    assert metrics["count.majority_baseline"] < 1  # the 3 clips do not all hold the same number of objects
    always = StandingStill(clips, CONFIG)
    always.answer = lambda frames, questions, max_new_tokens: ["yes" if "bounce" in q else "?" for q in questions]
    metrics = evaluate_world(always, ["video_qa"], CONFIG)["video_qa"].summary["metrics"]
    assert metrics["bounce.accuracy"] == bounced.count(True) / len(bounced) <= metrics["bounce.majority_baseline"]


def test_direction_parts_tell_a_missed_sideways_motion(clips):
    vertical_only = GroundTruth(clips, CONFIG)  # says "up" for "up-right"
    truth = vertical_only.answer
    vertical_only.answer = lambda frames, questions, max_new_tokens: [
        answer.split("-")[0] for answer in truth(frames, questions, max_new_tokens)]
    metrics = evaluate_world(vertical_only, ["video_qa"], CONFIG)["video_qa"].summary["metrics"]
    moves = [world.DIRECTIONS[obj.direction] for clip in clips for obj in clip.objects]
    assert metrics["direction.horizontal_accuracy"] == sum(0 in move for move in moves) / len(moves) < 1
    assert metrics["direction.vertical_accuracy"] == 1.0


def test_conversation_keeps_the_turns_apart(clips):
    echo = GroundTruth(clips, CONFIG)  # answers the first question right, then repeats that answer
    echo.converse = lambda frames, questions, max_new_tokens: echo.answer(frames, questions[:1], 1) * len(questions)
    summary = evaluate_world(echo, ["conversation"], CONFIG)["conversation"].summary
    assert summary["metrics"]["first_turn.accuracy"] == 1.0
    assert summary["metrics"]["later_turns.accuracy"] < 0.5
    turns = [world.conversation_questions(clip) for clip in clips]
    assert summary["by_turn"]["first_turn"]["total"] == len(clips)
    assert summary["by_turn"]["later_turns"]["total"] == sum(len(qas) - 1 for qas in turns)
    assert summary["samples"][0]["questions"] == [qa.question for qa in turns[0]]


def test_logged_samples_give_every_clips_outcome_for_a_comparison_clip_by_clip(clips):
    tasks = ["video_qa", "conversation", "caption", "text_to_image", "continuation"]
    few = evaluate_world(StandingStill(clips, CONFIG), tasks, dataclasses.replace(CONFIG, samples_kept=1))
    every = evaluate_world(StandingStill(clips, CONFIG), tasks, dataclasses.replace(CONFIG, samples_kept=None))
    assert all(len(few[task].summary["samples"]) == 1 for task in tasks)
    for task in ("conversation", "caption", "text_to_image", "continuation"):
        assert [sample["seed"] for sample in every[task].summary["samples"]] == [clip.seed for clip in clips]
    assert len(every["video_qa"].summary["samples"]) == every["video_qa"].summary["questions"]
    kept = every["continuation"].summary["samples"]
    assert not any(sample["direction_kept"] for sample in kept)  # standing still keeps no direction
    turns = every["conversation"].summary["samples"]
    assert all(sample["correct"] == [True] * len(sample["questions"]) for sample in turns)
    with pytest.raises(ValueError, match="samples_kept"):
        WorldEvalConfig(samples_kept=-1)


def test_drawings_are_judged_at_world_size(clips):
    small = np.stack([np.asarray(Image.fromarray(f).resize((32, 32), Image.Resampling.BICUBIC)) for f in clips[0].frames])
    assert at_world_size(small, 64).shape == clips[0].frames.shape
    assert at_world_size(clips[0].frames, 64) is clips[0].frames


def test_world_config_checks():
    with pytest.raises(ValueError, match="seeds"):
        WorldEvalConfig(seeds=0)
    with pytest.raises(ValueError, match="shortest world clip"):
        WorldEvalConfig(context_frames=6, continuation_frames=6)
    with pytest.raises(ValueError, match="unknown world tasks"):
        evaluate_world(GroundTruth([], CONFIG), ["vqa"], CONFIG)
    with pytest.raises(ValueError, match="first_seed"):
        WorldEvalConfig(first_seed=-1)


def test_code_agreement_counts_all_codes_and_the_changed_ones():
    from lwm.eval.world import code_agreement
    from lwm.tokenizers import VQGAN

    class Patches(VQGAN):
        """A stand-in VQGAN whose code of a patch is whether the patch holds a bright pixel."""

        def __init__(self):
            torch.nn.Module.__init__(self)
            self.weight = torch.nn.Parameter(torch.zeros(()))
            self.config = type("Config", (), {"resolution": 64})()

        def encode_video(self, frames, chunk_size=16):
            return (frames.unflatten(-1, (8, 8)).unflatten(-3, (8, 8)).amax(dim=(1, 3, 5)) > 0).long()

    clip = world.generate_clip(world.split_seeds("held_out")[0])
    context, future = world.continuation(clip, 4, 2)
    everywhere, changed = code_agreement(Patches(), future.frames, future.frames, context.frames[-1])
    assert (everywhere == 1).all() and (changed == 1).all()
    still = np.repeat(context.frames[-1:], 2, axis=0)
    everywhere, changed = code_agreement(Patches(), still, future.frames, context.frames[-1])
    assert changed[0] == 0 and 0.5 < everywhere[0] < 1  # a copy keeps the background, misses what moved


def test_the_clips_can_start_at_another_held_out_seed():
    from lwm.eval.world import held_out_clips

    held_out = world.split_seeds("held_out")
    assert [clip.seed for clip in held_out_clips(3)] == list(held_out[:3])
    assert [clip.seed for clip in held_out_clips(2, first=50_000)] == list(held_out[50_000:50_002])


# ---------------------------------------------------------------------------------------------------
# Needles
# ---------------------------------------------------------------------------------------------------


def test_scaled_rope():
    rope = {"rope_type": "default", "rope_theta": 1e4}
    assert needle.scaled_rope(rope, "ntk", 1, 64, 256) == rope
    assert needle.scaled_rope(rope, "none", 4, 64, 256) == rope
    assert math.isclose(needle.scaled_rope(rope, "ntk", 4, 64, 256)["rope_theta"], 1e4 * 4 ** (64 / 62))
    assert needle.scaled_rope(rope, "linear", 2, 64, 256) == {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}
    yarn = needle.scaled_rope(rope, "yarn", 4, 64, 256)
    assert (yarn["rope_type"], yarn["factor"], yarn["original_max_position_embeddings"]) == ("yarn", 4.0, 256)
    # a model grown with YaRN from 256 tokens to 4x is stretched 2x further from the same first length
    assert needle.scaled_rope(yarn, "yarn", 2, 64, 1024) == {**yarn, "factor": 8.0}


def test_yarn_keeps_the_frequencies_that_turn_within_the_trained_length(tiny_model):
    lwm = tiny_model
    before = lwm.model.model.rotary_emb.inv_freq.clone()
    rope = needle.scaled_rope(dict(lwm.model.config.rope_parameters), "yarn", 4, lwm.model.config.head_dim, 256)
    with needle.rope_parameters(lwm.model, rope):
        after = lwm.model.model.rotary_emb.inv_freq
        turns = 256 * before / (2 * torch.pi)
        assert torch.equal(after[turns >= 2], before[turns >= 2]) and (turns >= 2).any()
        assert torch.allclose(after[turns <= 1], before[turns <= 1] / 4) and (turns <= 1).any()
        assert lwm.model.model.rotary_emb.attention_scaling == 1.0


def test_rope_parameters_change_and_restore(tiny_model):
    lwm = tiny_model
    before = lwm.model.model.rotary_emb.inv_freq.clone()
    rope = needle.scaled_rope(dict(lwm.model.config.rope_parameters), "linear", 2, lwm.model.config.head_dim, 256)
    with needle.rope_parameters(lwm.model, rope):
        assert torch.allclose(lwm.model.model.rotary_emb.inv_freq, before / 2)
    assert torch.equal(lwm.model.model.rotary_emb.inv_freq, before)


def test_needle_examples_fit_their_length(tiny_model):
    config = needle.NeedleEvalConfig(trained_length=200, multiples=(1, 2), depths=(0.0, 1.0), seeds=2)
    found = needle.examples(tiny_model.processor, config)
    assert len(found) == 2 * 2 * 2
    for multiple, depth, example in found:
        length = len(needle.prompt_ids(tiny_model.processor, example)) + config.max_new_tokens
        assert 0.8 * multiple * 200 < length <= multiple * 200
    with pytest.raises(ValueError, match="too short"):
        needle.examples(tiny_model.processor, needle.NeedleEvalConfig(trained_length=20))


def test_needle_answers_are_scored_by_the_number(tiny_model):
    example = needles.make_example(300, 0.5, seed=1)
    assert example.is_correct(f"It is {example.answer}.") and not example.is_correct("It is 12.")


def test_needle_across_ring_ranks_matches_one_process(tiny_model, tiny_model_dir):
    config = needle.NeedleEvalConfig(trained_length=160, multiples=(1, 2), depths=(0.5,), seeds=1,
                                     rope_scalings=("ntk",), ring_multiples=(1,), max_new_tokens=4)
    result = needle.evaluate_needle(tiny_model.model, tiny_model.processor, config, model_dir=tiny_model_dir)
    assert set(result["metrics"]) == {"accuracy@1x", "accuracy@2x.ntk", "accuracy@ring2.1x", "agreement@ring2.1x"}
    assert result["metrics"]["agreement@ring2.1x"] == 1.0  # sharded decoding is exact
    assert result["rope"]["2x.ntk"]["rope_theta"] > result["rope"]["1x"]["rope_theta"]
    assert {cell["setting"] for cell in result["cells"]} == {"1x", "2x.ntk", "ring2.1x"}
    assert [panel["settings"] for panel in result["panels"]] == [["1x", "2x.ntk"], ["ring2.1x"]]


def test_a_grown_context_is_measured_at_multiples_of_its_base_and_stretched_only_beyond_it():
    config = needle.NeedleEvalConfig(trained_length=400, base_length=100, multiples=(1, 4, 8),
                                     rope_scalings=("none", "ntk"), ring_multiples=(), multi_needles=(3,))
    assert [config.length(m) for m in config.multiples] == [100, 400, 800]
    assert [config.stretch(m) for m in config.multiples] == [1.0, 1.0, 2.0]
    names = [row.name for row in needle.settings(config)]
    assert names == ["1x", "4x", "8x.none", "8x.ntk", "1x.3needles", "4x.3needles", "1x.3needles.all", "4x.3needles.all"]
    with pytest.raises(ValueError, match="multi_needles"):
        needle.NeedleEvalConfig(trained_length=400, multi_needles=(1,))


def test_multi_needle_examples_fit_and_ask_for_one_or_all(tiny_model):
    config = needle.NeedleEvalConfig(trained_length=300, depths=(0.0, 1.0), seeds=1)
    for asks_all in (False, True):
        found = needle.examples(tiny_model.processor, config, multiples=(1,), n_needles=3, asks_all=asks_all)
        budget = config.reply_budget(3, asks_all)
        for _, depth, example in found:
            assert len(example.needles) == 3 and example.asks_all == asks_all
            assert len(needle.prompt_ids(tiny_model.processor, example)) + budget <= 300
            assert example.needles[0].depth == depth


def test_the_eval_reports_the_multi_needle_variants(tiny_model):
    config = needle.NeedleEvalConfig(trained_length=200, multiples=(1,), depths=(0.5,), seeds=1, ring_multiples=(),
                                     multi_needles=(2,), max_new_tokens=3)
    result = needle.evaluate_needle(tiny_model.model, tiny_model.processor, config)
    assert set(result["metrics"]) == {"accuracy@1x", "accuracy@1x.2needles", "accuracy@1x.2needles.all"}
    assert [panel["title"] for panel in result["panels"]] == [
        "one needle", "2 needles, asked for one", "2 needles, asked for all"]
    assert {sample["setting"] for sample in result["samples"]} == {"1x", "1x.2needles", "1x.2needles.all"}


# ---------------------------------------------------------------------------------------------------
# Bars and report
# ---------------------------------------------------------------------------------------------------


def test_bars(tmp_path):
    assert bars.parse_bar("video_qa.accuracy>=0.9") == bars.Bar("video_qa.accuracy", ">=", 0.9)
    assert bars.parse_bar("continuation.trajectory_error <= 6") == bars.Bar("continuation.trajectory_error", "<=", 6)
    with pytest.raises(ValueError, match="METRIC>=VALUE"):
        bars.parse_bar("video_qa.accuracy=0.9")
    path = tmp_path / "bars.json"
    path.write_text(json.dumps({"video_qa.accuracy": 0.9, "continuation.trajectory_error": "<= 6", "needle.accuracy@1x": 0.5}))
    loaded = bars.load_bars(path)
    metrics = {"video_qa.accuracy": 0.95, "continuation.trajectory_error": float("nan")}
    verdicts = {v["metric"]: v for v in bars.check_bars(loaded, metrics, ["video_qa", "continuation"])}
    assert verdicts["video_qa.accuracy"]["passed"] is True
    assert verdicts["continuation.trajectory_error"]["passed"] is False  # NaN: nothing measured is no pass
    assert verdicts["needle.accuracy@1x"]["passed"] is None  # the task did not run
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        bars.load_bars(path)


def test_pictures_and_json(tmp_path):
    rows = [("a video", np.zeros((3, 8, 8, 3), np.uint8)), ("an image", np.full((1, 16, 16, 3), 255, np.uint8))]
    report.video_grid(rows, tmp_path / "grid.png", cell=32)
    grid = Image.open(tmp_path / "grid.png")
    assert grid.width >= 3 * 32 and grid.height >= 2 * 32
    cells = [{"setting": s, "length": n, "depth": d, "accuracy": a, "correct": int(2 * a), "total": 2}
             for s, n, a in (("1x", 100, 1.0), ("2x.ntk", 200, 0.5), ("1x.2needles", 100, 0.0)) for d in (0.0, 1.0)]
    panels = [{"title": "one needle, RoPE ntk beyond 100", "settings": ["1x", "2x.ntk"]},
              {"title": "2 needles, asked for one", "settings": ["1x.2needles"]}]
    report.heatmap(panels, cells, tmp_path / "heat.png", cell=40)
    heat = np.asarray(Image.open(tmp_path / "heat.png").convert("RGB"))
    assert heat.shape[0] >= 2 * 2 * 40 and heat.shape[1] >= 2 * 40
    table = report.format_heatmap(panels, cells).splitlines()
    assert table[0] == panels[0]["title"] and table[1].split() == ["tokens", "100", "200"]
    assert table[3].split() == ["0", "100%", "50%"] and table[-1].split() == ["1", "0%"]
    green, red = report.accuracy_colour(1.0), report.accuracy_colour(0.0)
    assert green[1] > green[0] and red[0] > red[1]
    report.write_json({"x": float("nan"), "y": [np.float32(1.5)]}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": None, "y": [1.5]}


# ---------------------------------------------------------------------------------------------------
# The CLI on a tiny random model
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from lwm.api import LWM

    return LWM.from_pretrained(tiny_model_dir)


def test_random_model_runs_end_to_end_and_fails_its_bars(tiny_model_dir, tmp_path, capsys):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")  # with bars of its own, as a shipped model has
    (folder / bars.BARS_FILE).write_text(json.dumps({"video_qa.accuracy": 0.5}))
    code = lwm_main(["eval", "--model", str(folder), "--out", str(tmp_path), "--quick", "--seeds", "1",
                     "--video-frames", "2", "--trained-length", "160", "--log-samples",
                     "--bar", "text_to_video.accuracy>=0.5", "--bar", "tokenizer.psnr>=0",
                     "--bar", "needle.accuracy@1x>=0.5"])
    assert code == 1
    out = capsys.readouterr()
    assert "video_qa.accuracy" in out.out and "FAIL" in out.out and "bars not met" in out.err
    result = json.loads((tmp_path / "report.json").read_text())
    assert result["tasks_run"] == ["video_qa", "conversation", "caption", "text_to_image", "text_to_video",
                                   "continuation", "tokenizer", "needle"]
    verdicts = {v["metric"]: v["passed"] for v in result["bars"]}
    assert verdicts == {"text_to_video.accuracy": False, "tokenizer.psnr": True, "video_qa.accuracy": False,
                        "needle.accuracy@1x": False}
    assert result["metrics"]["video_qa.accuracy"] < 0.5 and result["metrics"]["needle.accuracy@1x"] == 0
    assert 0 <= result["metrics"]["tokenizer.code_stability"] <= 1  # reported; its values: test_reconstruction.py
    for name in ("free_running", "teacher_forced", "static_baseline"):  # frames 1-2 of the quick continuation
        assert all(0 <= result["metrics"][f"continuation.{name}.code_agreement@{k}"] <= 1 for k in (1, 2))
    assert all(0 <= result["metrics"][f"continuation.teacher_forced.changed_code_agreement@{k}"] <= 1 for k in (1, 2))
    assert "continuation.teacher_forced.direction_kept" in result["metrics"]
    assert result["tasks"]["video_qa"]["seeds"] == [world.split_seeds("held_out")[0]]
    first_clip = world.generate_clip(result["tasks"]["video_qa"]["seeds"][0])
    assert result["tasks"]["video_qa"]["questions"] == len(world.questions(first_clip))
    assert len(result["tasks"]["video_qa"]["samples"]) == len(world.questions(first_clip)) > 4  # --log-samples
    for picture in ("text_to_image.png", "text_to_video.png", "continuation.png", "needle_heatmap.png"):
        assert Image.open(tmp_path / picture).width > 0
    assert sorted(result["pictures"]) == sorted(["text_to_image.png", "text_to_video.png", "continuation.png",
                                                 "needle_heatmap.png"])


def test_cli_passes_bars_it_meets_and_names_bad_input(tiny_model_dir, tmp_path, capsys):
    code = lwm_main(["eval", "--model", str(tiny_model_dir), "--out", str(tmp_path), "--quick", "--seeds", "1",
                     "--tasks", "tokenizer", "--bar", "tokenizer.codebook_usage>=0", "--bar", "needle.accuracy@1x>=0.9"])
    assert code == 0
    verdicts = {v["metric"]: v["status"] for v in json.loads((tmp_path / "report.json").read_text())["bars"]}
    assert verdicts == {"tokenizer.codebook_usage": "ok", "needle.accuracy@1x": "skipped (task not run)"}
    assert lwm_main(["eval", "--model", str(tiny_model_dir), "--out", str(tmp_path), "--bar", "psnr=3"]) == 1
    assert "METRIC>=VALUE" in capsys.readouterr().err
    assert lwm_main(["eval", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 1
    assert "not a model folder" in capsys.readouterr().err


@pytest.mark.parametrize("procedure", ["chat", "in_block"])
def test_teacher_forcing_reads_back_a_greedy_continuation_exactly(tiny_model, procedure, monkeypatch):
    from lwm.eval.world import teacher_forced_codes
    from lwm.generation.sampling import GREEDY

    monkeypatch.setattr(tiny_model, "drawing", dataclasses.replace(tiny_model.drawing, continuation_procedure=procedure))
    clip = world.generate_clip(world.split_seeds("held_out")[0])
    given = torch.from_numpy(tiny_model.processor.encode_media({"type": "video", "frames": clip.frames[:2]}))
    drawn = tiny_model.continue_codes(given, 2, GREEDY)
    prompt = tiny_model.continuation_prompt(given).tolist()
    block = tiny_model.processor.vision_ids(given.numpy())
    if procedure == "chat":  # the request's block closed, then a new one opened by text
        starts = [i for i in range(len(prompt)) if prompt[i : i + len(block)] == block]
        assert len(starts) == 1 and prompt[-1] < tiny_model.processor.text_vocab_size
    else:  # the request's own block, left open after the given frames
        assert prompt[-len(block):] == block[:-1] + [tiny_model.processor.eof_token_id]
    # each greedy code is the argmax given the codes before it, which is what teacher forcing reads
    assert torch.equal(teacher_forced_codes(tiny_model, given, drawn), drawn)
    other = (drawn + 1) % tiny_model.processor.codebook_size
    assert torch.equal(teacher_forced_codes(tiny_model, given, other)[0, 0, 0], drawn[0, 0, 0])
