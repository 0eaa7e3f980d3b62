"""World evaluation: how well a model understands and draws the synthetic world, on held-out seeds.

Every score is computed from what the model actually produced, read by the world's own tools:

- video QA: `world.questions(clip)` answered about the clip, scored by `judge.score_answer` (exact
  answer words), per question type, beside the accuracy of always giving a type's most common answer;
- conversation: `world.conversation_questions(clip)` asked one after the other in one chat, the video
  with the first and the model's own answers kept as the history (as `lwm chat` does for a multi-turn
  model), scored like video QA for the first turn and for the later ones;
- captions: "Describe the video." scored by `judge.score_caption` against the ground truth;
- text -> image / text -> video: `world.image_prompt_for` / `world.prompt_for` of a held-out clip,
  the generated frames read back by the judge and checked for count, colour, shape, size and region
  (image) or direction (video);
- continuation: the first frames of a clip in, the next frames out, scored by
  `judge.score_continuation` against the world's true physics (trajectory error, direction kept);
  the same score for simply repeating the last given frame is reported beside it as a baseline;
- tokenizer: PSNR / SSIM / codebook usage of the model's VQGAN on held-out frames.

The model is seen through a `Subject` (`LWMSubject` wraps an `LWM`), so the harness itself can be
validated by a subject that returns the ground truth: it must score perfectly.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from lwm import media, world
from lwm.eval.reconstruction import evaluate_reconstruction, psnr
from lwm.generation import FrameLayout
from lwm.tokenizers import CAPTION_REQUESTS
from lwm.world import judge

WORLD_TASKS: tuple[str, ...] = ("video_qa", "conversation", "caption", "text_to_image", "text_to_video", "continuation",
                                "tokenizer")


@dataclass(frozen=True)
class WorldEvalConfig:
    seeds: int = 20  # held-out clips per task (`seeds` of split_seeds("held_out") from the `first_seed`-th on)
    first_seed: int = 0
    video_frames: int = 4  # frames drawn per text -> video prompt (the world's text -> video examples show 4)
    context_frames: int = 4  # frames shown before a continuation
    continuation_frames: int = 4  # frames the model continues with
    answer_tokens: int = 16
    caption_tokens: int = 96
    temperature: float | None = None  # of the drawing tasks (0: greedy; None: the model's); text is always greedy
    grid_samples: int = 4  # generated videos drawn in each task's PNG grid
    # Prompts, outputs and scores kept in the report per task; None keeps every one, so that two models'
    # reports on the same clips can be compared clip by clip.
    samples_kept: int | None = 4

    def __post_init__(self):
        for name in ("seeds", "video_frames", "context_frames", "continuation_frames", "answer_tokens",
                     "caption_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.context_frames + self.continuation_frames > world.WorldConfig().min_frames:
            raise ValueError(f"context_frames + continuation_frames must be at most {world.WorldConfig().min_frames}, "
                             "the length of the shortest world clip")
        if self.first_seed < 0:
            raise ValueError(f"first_seed must be >= 0, got {self.first_seed}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be 0 (greedy) or positive, got {self.temperature}")
        if self.samples_kept is not None and self.samples_kept < 0:
            raise ValueError(f"samples_kept must be >= 0 or None (every one), got {self.samples_kept}")

    def keeps_sample(self, kept: int) -> bool:
        """Whether a task that has kept `kept` samples keeps the next one."""
        return self.samples_kept is None or kept < self.samples_kept


class Subject(Protocol):
    """What the harness asks of a model. Frames are uint8 `[T, H, W, 3]`; images `[H, W, 3]`."""

    def answer(self, frames: np.ndarray, questions: list[str], max_new_tokens: int) -> list[str]:
        """Each question asked alone about the video."""

    def converse(self, frames: np.ndarray, questions: list[str], max_new_tokens: int) -> list[str]:
        """The questions asked in turn in one chat, the video with the first."""

    def draw_image(self, prompt: str, seed: int) -> np.ndarray: ...

    def draw_video(self, prompt: str, num_frames: int, seed: int) -> np.ndarray: ...

    def continue_video(self, frames: np.ndarray, num_frames: int, seed: int) -> np.ndarray: ...


class LWMSubject:
    """An `LWM` as the harness sees it: the public API, text greedy, drawing at `temperature` (None: as
    the model draws by default) with a seed."""

    def __init__(self, lwm, temperature: float | None = None):
        self.lwm = lwm
        self.temperature = temperature

    def answer(self, frames: np.ndarray, questions: list[str], max_new_tokens: int) -> list[str]:
        video = self._encoded(frames)
        return [
            self.lwm.chat([{"role": "user", "content": [{"type": "text", "text": question}, video]}],
                          max_new_tokens=max_new_tokens)
            for question in questions
        ]

    def converse(self, frames: np.ndarray, questions: list[str], max_new_tokens: int) -> list[str]:
        messages, replies = [], []
        for turn, question in enumerate(questions):
            content = [{"type": "text", "text": question}] + ([self._encoded(frames)] if turn == 0 else [])
            messages.append({"role": "user", "content": content})
            replies.append(self.lwm.chat(messages, max_new_tokens=max_new_tokens))
            messages.append({"role": "assistant", "content": replies[-1]})
        return replies

    def _encoded(self, frames: np.ndarray) -> dict:
        """The video as `LWM.chat` reads it, encoded once by the VQGAN for all the questions about it."""
        sampled = self.lwm.load_media(frames, "video")
        return {"type": "video", "codes": self.lwm.processor.encode_media({"type": "video", "frames": sampled})}

    def draw_image(self, prompt: str, seed: int) -> np.ndarray:
        return np.asarray(self.lwm.generate_image(prompt, temperature=self.temperature, seed=seed))

    def draw_video(self, prompt: str, num_frames: int, seed: int) -> np.ndarray:
        return self.lwm.generate_video(prompt, num_frames=num_frames, temperature=self.temperature, seed=seed).frames

    def continue_video(self, frames: np.ndarray, num_frames: int, seed: int) -> np.ndarray:
        return self.lwm.continue_video(frames, num_frames=num_frames, temperature=self.temperature, seed=seed).frames

    def teacher_forced(self, frames: np.ndarray, future: np.ndarray) -> np.ndarray:
        """The continuation the model predicts given the true past at every code (`teacher_forced_codes`), decoded."""
        given = torch.from_numpy(self._encoded(frames)["codes"])
        truth = torch.from_numpy(self.lwm.processor.encode_media({"type": "video", "frames": future},
                                                                   {"type": "video", "frames": frames}))
        return self.lwm._decode_codes(teacher_forced_codes(self.lwm, given, truth), context=given)


@torch.no_grad()
def teacher_forced_codes(lwm, given: torch.Tensor, future: torch.Tensor) -> torch.LongTensor:
    """The argmax code at each position of the `future` codes `[frames, h, w]` after the continuation
    prompt of the `given` ones, read in one forward pass: what the model predicts from the true past."""
    layout = FrameLayout.from_config(lwm.model.config, lwm.processor.codes_per_frame)
    prompt = lwm.continuation_prompt(given)
    future_ids = layout.frame_ids(future, last_delimiter=layout.eov_token_id)
    logits = lwm.model(torch.cat([prompt, future_ids])[None].to(lwm.device)).logits[0]
    # position p predicts the id at p + 1: the future's ids are predicted from the one before each
    codes = logits[len(prompt) - 1 : len(prompt) - 1 + len(future_ids),
                   layout.first_code_id : layout.first_code_id + layout.num_codes].argmax(-1)
    return codes.unflatten(0, (len(future), layout.frame_length))[:, :-1].unflatten(-1, future.shape[-2:]).cpu()


@dataclass
class Tally:
    """Right / total counts by key."""

    correct: Counter = field(default_factory=Counter)
    total: Counter = field(default_factory=Counter)

    def add(self, key: str, right: bool) -> None:
        self.correct[key] += int(right)
        self.total[key] += 1

    def summary(self) -> dict[str, dict]:
        return {key: {"correct": self.correct[key], "total": self.total[key],
                      "accuracy": self.correct[key] / self.total[key]} for key in self.total}


@dataclass
class TaskResult:
    """One task's report entry (`summary`, JSON-ready: metrics, counts, seeds, samples), its generated
    videos for the PNG grid ((label, frames) rows) and how long it took."""

    summary: dict
    grid: list[tuple[str, np.ndarray]] = field(default_factory=list)
    seconds: float = 0.0


def held_out_clips(n: int, first: int = 0) -> list[world.Clip]:
    return [world.generate_clip(seed) for seed in world.split_seeds("held_out", first + n)[first:]]


def continuation_case(clip: world.Clip, config: WorldEvalConfig) -> tuple[world.Clip, world.Clip]:
    """The frames shown and the true future the model should continue with."""
    return world.continuation(clip, config.context_frames, config.continuation_frames)


def at_world_size(frames: np.ndarray, frame_size: int) -> np.ndarray:
    """Generated frames resized to the world's frame size, so the judge measures sizes and positions in
    world pixels whatever the VQGAN's resolution."""
    frames = np.asarray(frames)
    if frames.shape[-3:-1] == (frame_size, frame_size):
        return frames
    flat = frames.reshape(-1, *frames.shape[-3:])
    resized = [np.asarray(Image.fromarray(frame).resize((frame_size, frame_size), Image.Resampling.BICUBIC))
               for frame in flat]
    return np.stack(resized).reshape(*frames.shape[:-3], frame_size, frame_size, 3)


def score_drawing(frames: np.ndarray, prompt: str, frame_size: int) -> judge.Score:
    """Whether a drawn image `[H, W, 3]` or video `[T, H, W, 3]` shows what `prompt` says."""
    return judge.score(at_world_size(frames, frame_size), prompt)


def score_continuation(frames: np.ndarray, future: world.Clip) -> judge.ContinuationScore:
    return judge.score_continuation(at_world_size(frames, future.frame_size), future)


# ---------------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------------


def evaluate_video_qa(subject: Subject, clips: list[world.Clip], config: WorldEvalConfig,
                      progress: bool = False) -> TaskResult:
    """Accuracy by question type, and `<type>.majority_baseline`: the accuracy of always giving the
    type's most common answer on these clips, what a model that ignores the video can reach; for the
    direction, also how often its horizontal and its vertical part are right."""
    tally, direction_parts, answers, samples = Tally(), Tally(), defaultdict(Counter), []
    for clip in tqdm(clips, desc="video QA", disable=not progress):
        qas = world.questions(clip)
        replies = subject.answer(clip.frames, [qa.question for qa in qas], config.answer_tokens)
        for qa, reply in zip(qas, replies):
            right = judge.score_answer(reply, qa)
            tally.add(qa.type, right)
            answers[qa.type][qa.answer] += 1
            if qa.type == "direction":
                for part, part_right in zip(("horizontal", "vertical"), judge.direction_parts_right(reply, qa)):
                    direction_parts.add(part, part_right)
            if config.keeps_sample(len(samples)):
                samples.append({"seed": clip.seed, "question": qa.question, "answer": qa.answer, "reply": reply,
                                "correct": right})
    by_type = tally.summary()
    correct, total = sum(tally.correct.values()), sum(tally.total.values())
    metrics = {"accuracy": correct / total}
    for kind, entry in by_type.items():
        metrics[f"{kind}.accuracy"] = entry["accuracy"]
        metrics[f"{kind}.majority_baseline"] = answers[kind].most_common(1)[0][1] / entry["total"]
    for part, entry in direction_parts.summary().items():
        metrics[f"direction.{part}_accuracy"] = entry["accuracy"]
    return TaskResult({"metrics": metrics, "questions": total, "by_type": by_type,
                       "seeds": [clip.seed for clip in clips], "samples": samples})


def evaluate_conversation(subject: Subject, clips: list[world.Clip], config: WorldEvalConfig,
                          progress: bool = False) -> TaskResult:
    """A few questions per clip in one chat: accuracy on the first turn and on the turns after it."""
    tally, samples = Tally(), []
    for clip in tqdm(clips, desc="conversation", disable=not progress):
        qas = world.conversation_questions(clip)
        replies = subject.converse(clip.frames, [qa.question for qa in qas], config.answer_tokens)
        rights = [judge.score_answer(reply, qa) for qa, reply in zip(qas, replies)]
        for turn, right in enumerate(rights):
            tally.add("first_turn" if turn == 0 else "later_turns", right)
        if config.keeps_sample(len(samples)):
            samples.append({"seed": clip.seed, "questions": [qa.question for qa in qas],
                            "answers": [qa.answer for qa in qas], "replies": replies, "correct": rights})
    by_turn = tally.summary()
    metrics = {"accuracy": sum(tally.correct.values()) / sum(tally.total.values())}
    metrics.update({f"{turn}.accuracy": entry["accuracy"] for turn, entry in by_turn.items()})
    return TaskResult({"metrics": metrics, "by_turn": by_turn, "seeds": [clip.seed for clip in clips],
                       "samples": samples})


def evaluate_caption(subject: Subject, clips: list[world.Clip], config: WorldEvalConfig,
                     progress: bool = False) -> TaskResult:
    scores, samples = [], []
    for clip in tqdm(clips, desc="captions", disable=not progress):
        [text] = subject.answer(clip.frames, [CAPTION_REQUESTS["video"]], config.caption_tokens)
        scores.append(judge.score_caption(text, clip))
        if config.keeps_sample(len(samples)):
            samples.append({"seed": clip.seed, "truth": world.caption(clip), "caption": text,
                            "checks": scores[-1].checks})
    return TaskResult({**_judged(scores), "seeds": [clip.seed for clip in clips], "samples": samples})


def evaluate_text_to_image(subject: Subject, clips: list[world.Clip], config: WorldEvalConfig,
                           progress: bool = False) -> TaskResult:
    scores, samples, grid = [], [], []
    for clip in tqdm(clips, desc="text -> image", disable=not progress):
        prompt = world.image_prompt_for(clip, world.still_frame(clip))
        image = subject.draw_image(prompt, seed=clip.seed)
        scores.append(score_drawing(image, prompt, clip.frame_size))
        if config.keeps_sample(len(samples)):
            samples.append({"seed": clip.seed, "prompt": prompt, "checks": scores[-1].checks})
        if len(grid) < config.grid_samples:
            grid.append((_label(prompt, scores[-1].correct), image[None]))
    return TaskResult({**_judged(scores), "seeds": [clip.seed for clip in clips], "samples": samples}, grid)


def evaluate_text_to_video(subject: Subject, clips: list[world.Clip], config: WorldEvalConfig,
                           progress: bool = False) -> TaskResult:
    scores, samples, grid = [], [], []
    for clip in tqdm(clips, desc="text -> video", disable=not progress):
        prompt = world.prompt_for(clip)
        video = subject.draw_video(prompt, config.video_frames, seed=clip.seed)
        scores.append(score_drawing(video, prompt, clip.frame_size))
        if config.keeps_sample(len(samples)):
            samples.append({"seed": clip.seed, "prompt": prompt, "checks": scores[-1].checks})
        if len(grid) < config.grid_samples:
            grid.append((_label(prompt, scores[-1].correct), video))
    return TaskResult({**_judged(scores), "seeds": [clip.seed for clip in clips], "samples": samples}, grid)


def code_agreement(vqgan, frames: np.ndarray, truth: np.ndarray, last_given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the share of codes that `frames` and the true frames get from the VQGAN: of all codes,
    and of the codes that changed from the true frame before (`last_given` before the first), where the
    motion is (over 85% of a world frame is background that a copy of the last frame gets right)."""
    device = next(vqgan.parameters()).device
    drawn, true, before = (vqgan.encode_video(media.preprocess(x, vqgan.config.resolution).to(device)).cpu()
                           for x in (frames, truth, np.concatenate([last_given[None], truth[:-1]])))
    same, changed = (drawn == true).flatten(1), (true != before).flatten(1)
    of_changed = (same & changed).sum(1) / changed.sum(1).clamp(min=1)
    return same.float().mean(1).numpy(), of_changed.float().numpy()


def evaluate_continuation(subject: Subject, clips: list[world.Clip], config: WorldEvalConfig,
                          progress: bool = False, vqgan=None) -> TaskResult:
    """Direction kept and trajectory error of the drawn continuations, beside repeating the last given
    frame. With the VQGAN and a subject that can be teacher-forced, also what the model predicts given
    the true past at every code (`teacher_forced.*`), and per future frame the share of codes its
    free-running and teacher-forced continuations (and the repeated last frame) share with the truth
    (`*.code_agreement@k`; `*.changed_code_agreement@k` where the true code changed from the frame
    before), all read back through the VQGAN so they are measured alike."""
    scores, static, samples, grid = [], [], [], []
    forced_scores, agreement = [], defaultdict(list)
    for clip in tqdm(clips, desc="continuation", disable=not progress):
        context, future = continuation_case(clip, config)
        frames = subject.continue_video(context.frames, config.continuation_frames, seed=clip.seed)
        scores.append(score_continuation(frames, future))
        still = np.repeat(context.frames[-1:], config.continuation_frames, axis=0)
        static.append(score_continuation(still, future))
        if vqgan is not None and hasattr(subject, "teacher_forced"):
            forced = subject.teacher_forced(context.frames, future.frames)
            forced_scores.append(score_continuation(forced, future))
            for name, drawn in (("free_running", frames), ("teacher_forced", forced), ("static_baseline", still)):
                agreement[name].append(code_agreement(vqgan, drawn, future.frames, context.frames[-1]))
        if config.keeps_sample(len(samples)):
            samples.append({"seed": clip.seed, "trajectory_error": scores[-1].trajectory_error,
                            "found": scores[-1].found, "direction_kept": scores[-1].direction_kept})
        if len(grid) < config.grid_samples:
            label = f"seed {clip.seed}: given | generated | true"
            shown = at_world_size(frames, clip.frame_size)
            grid.append((_label(label, scores[-1].direction_kept), np.concatenate([context.frames, shown, future.frames])))
    metrics = {
        "direction_kept": float(np.mean([s.direction_kept for s in scores])),
        "trajectory_error": _nanmean([s.trajectory_error for s in scores]),
        "found": float(np.mean([s.found for s in scores])),
        "static_baseline.trajectory_error": _nanmean([s.trajectory_error for s in static]),
    }
    if forced_scores:  # what the model knows given the true past, beside what it draws from its own samples
        metrics["teacher_forced.direction_kept"] = float(np.mean([s.direction_kept for s in forced_scores]))
        metrics["teacher_forced.trajectory_error"] = _nanmean([s.trajectory_error for s in forced_scores])
        for name, per_clip in agreement.items():
            everywhere, where_changed = np.mean(per_clip, axis=0)
            for frame, (value, changed) in enumerate(zip(everywhere, where_changed), 1):
                metrics[f"{name}.code_agreement@{frame}"] = float(value)
                if name != "static_baseline":  # which matches no changed code by construction
                    metrics[f"{name}.changed_code_agreement@{frame}"] = float(changed)
    summary = {"metrics": metrics, "count": len(scores), "context_frames": config.context_frames,
               "continuation_frames": config.continuation_frames, "seeds": [clip.seed for clip in clips],
               "samples": samples}
    return TaskResult(summary, grid)


def evaluate_tokenizer(vqgan, clips: list[world.Clip], batch_size: int = 32, progress: bool = False) -> TaskResult:
    """Reconstruction of every frame of the clips, resized to the VQGAN's resolution as the processor does,
    and how stable the codes are from frame to frame where nothing moved (`code_stability`).

    SSIM needs frames at least as large as its window; for smaller ones (test-sized VQGANs) the report
    leaves it out.
    """
    pixels = torch.cat([media.preprocess(clip.frames, vqgan.config.resolution) for clip in clips])
    measured = evaluate_reconstruction(vqgan, pixels, batch_size, progress, [clip.n_frames for clip in clips])
    metrics = {key: measured[key] for key in ("psnr", "codebook_usage", "perplexity", "ssim", "code_stability")
               if measured[key] is not None}
    if vqgan.config.motion_max_shift:  # what a decoder reads and draws: each clip told from its first frame
        told, moved = [], []
        for clip, frames in zip(clips, pixels.split([clip.n_frames for clip in clips])):
            tokens = vqgan.encode_video(frames)
            told.append(vqgan.decode_video(tokens))
            moved.append((tokens[1:] >= vqgan.codebook_size).double().mean().item())
        metrics["motion.psnr"] = psnr(pixels, torch.cat(told))
        metrics["motion.moved_patches"] = float(np.mean(moved))
    return TaskResult({"metrics": metrics, "frames": len(pixels), "resolution": vqgan.config.resolution,
                       "seeds": [clip.seed for clip in clips]})


def evaluate_world(subject: Subject, tasks: list[str], config: WorldEvalConfig, vqgan=None,
                   progress: bool = False) -> dict[str, TaskResult]:
    """The world tasks asked for, in `WORLD_TASKS` order, each on the first `config.seeds` held-out clips."""
    unknown = set(tasks) - set(WORLD_TASKS)
    if unknown:
        raise ValueError(f"unknown world tasks {sorted(unknown)}; expected some of {', '.join(WORLD_TASKS)}")
    if "tokenizer" in tasks and vqgan is None:
        raise ValueError("the tokenizer task needs the model's VQGAN")
    if not tasks:
        return {}
    clips = held_out_clips(config.seeds, config.first_seed)
    runners = {
        "video_qa": evaluate_video_qa,
        "conversation": evaluate_conversation,
        "caption": evaluate_caption,
        "text_to_image": evaluate_text_to_image,
        "text_to_video": evaluate_text_to_video,
        "continuation": evaluate_continuation,
    }
    results = {}
    for task in WORLD_TASKS:
        if task not in tasks:
            continue
        start = time.perf_counter()
        if task == "tokenizer":
            results[task] = evaluate_tokenizer(vqgan, clips, progress=progress)
        elif task == "continuation":
            results[task] = evaluate_continuation(subject, clips, config, progress, vqgan=vqgan)
        else:
            results[task] = runners[task](subject, clips, config, progress)
        results[task].seconds = time.perf_counter() - start
    return results


def _judged(scores: list[judge.Score]) -> dict:
    """Accuracy (every check right) and each check's own accuracy over judged outputs."""
    checks = Tally()
    for score in scores:
        for check, right in score.checks.items():
            checks.add(check, right)
    metrics = {"accuracy": float(np.mean([score.correct for score in scores]))}
    metrics.update({f"{check}.accuracy": entry["accuracy"] for check, entry in checks.summary().items()})
    return {"metrics": metrics, "count": len(scores), "checks": checks.summary()}


def _label(text: str, correct: bool) -> str:
    return f"[{'right' if correct else 'wrong'}] {text}"


def _nanmean(values: list[float]) -> float:
    """The mean of the finite values; NaN when there are none (nothing was found)."""
    finite = [value for value in values if np.isfinite(value)]
    return float(np.mean(finite)) if finite else float("nan")
