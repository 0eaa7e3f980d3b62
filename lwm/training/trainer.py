"""The DeepSpeed trainer: dp × sp ranks, stages of growing context, exact resume.

World = dp × sp (`lwm.parallel.Mesh`). The ranks of a sequence-parallel group read the same whole
rows; each aligns the targets on them, then keeps its zigzag shard (`model_inputs`) and runs ring
attention over the group. Every rank is also a DeepSpeed data-parallel rank, so ZeRO partitions over
the whole world.

Exact gradients. The loss of a micro-batch is LWM's `0.5 · (text CE + vision CE)` over the whole
global micro-batch (all dp × sp ranks). Each rank computes its own tokens' weighted CE sums divided
by the *global* weight sums (all-reduced), so the ranks' losses add up to the global loss and their
parameter gradients add up to the single-device gradient. DeepSpeed averages gradients over its
data-parallel world, which here is every rank; multiplying each rank's loss by that size turns the
average back into the sum. With gradient accumulation DeepSpeed divides by the number of
micro-batches, so an optimiser step sees the mean of the micro-batch losses.
"""

from __future__ import annotations

import fnmatch
import math
import os
import time
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from lwm.data import PackedLoader, TokenizedDataset
from lwm.model import LWMConfig, LWMForCausalLM, modality_weights, next_token_targets
from lwm.parallel import Mesh, build_mesh, free_local_port, shard_batch
from lwm.training import checkpoint
from lwm.training.config import ConfigError, DataConfig, OptimizerConfig, ScheduleConfig, StageConfig, TrainConfig
from lwm.training.metrics import MetricsLogger

TRAINER_OWNED_DEEPSPEED_KEYS = (
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
    "gradient_clipping", "optimizer", "scheduler", "bf16", "fp16",
)


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN/inf; the last good checkpoint is kept."""


class Batches(Protocol):
    """What the trainer consumes: endless batches (dicts of tensors) with a resumable position."""

    def __next__(self) -> dict[str, torch.Tensor]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


BatchesFactory = Callable[[DataConfig, StageConfig, int, Mesh], Batches]


def packed_batches(data: DataConfig, stage: StageConfig, micro_batch_size: int, mesh: Mesh) -> PackedLoader:
    """This data-parallel rank's packed rows of the stage's dataset (lwm.data.loader), whole."""
    return PackedLoader(
        TokenizedDataset(data.path), stage.seq_len, micro_batch_size,
        seed=data.seed, task_weights=data.mixture, dp_rank=mesh.dp_rank, dp_size=mesh.dp_size,
        overlong=data.overlong, open_rows=data.open_rows, train_prompt_vision=data.train_prompt_vision,
        vision_noise=data.vision_noise,
    )


def model_inputs(batch: dict[str, torch.Tensor], model: LWMForCausalLM, mesh: Mesh) -> dict[str, torch.Tensor]:
    """This rank's forward arguments from a batch of whole rows.

    What a shard cannot see across its ends is computed on the whole rows first: the next-token
    targets (`shift_labels`, with their weights) and, for a model with a code grid, each code's place
    in its frame. Then every tensor is cut to this rank's zigzag shard (whole rows at sp = 1).
    """
    inputs = dict(batch)
    inputs["shift_labels"], inputs["loss_weights"] = next_token_targets(
        inputs.pop("labels"), batch["segment_ids"], batch["loss_weights"]
    )
    grid_ids = model.grid_ids_of(batch["input_ids"])
    if grid_ids is not None:
        inputs["vision_grid_ids"] = grid_ids
    return shard_batch(inputs, mesh.sp_rank, mesh.sp_size)


def init_distributed() -> None:
    """Joins the launcher's process group (torchrun, deepspeed), or makes a one-process one."""
    import deepspeed

    if dist.is_initialized():  # a group the caller made: DeepSpeed still reads where we are from the environment
        os.environ.setdefault("RANK", str(dist.get_rank()))
        os.environ.setdefault("LOCAL_RANK", str(dist.get_rank()))
        os.environ.setdefault("WORLD_SIZE", str(dist.get_world_size()))
    elif "RANK" not in os.environ:  # a plain `lwm train`: be rank 0 of 1
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_local_port()))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend)


def build_model(config: TrainConfig, stage: StageConfig, mesh: Mesh, start_from: str | None) -> LWMForCausalLM:
    """The model a stage trains: from the previous stage's export, or the configured start."""
    attention = "ring" if mesh.sp_size > 1 else config.model.attn_implementation
    source = start_from or config.model.name_or_path
    grid = {name: value for name in ("vision_grid_size", "vision_grid_embedding", "vision_rope_3d")
            if (value := getattr(config.model, name)) is not None}
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    if Path(source, "config.json").is_file():
        model = LWMForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation=attention, **grid)
        model.set_rope(stage.rope_parameters())  # the stage's RoPE, not the one the model was saved with
    elif source in LWMConfig.preset_names() or source.endswith(".json"):
        model = LWMForCausalLM(
            LWMConfig.from_preset(source, rope_parameters=stage.rope_parameters(), attn_implementation=attention, **grid)
        )
        if config.model.init_codes_from_vqgan:
            from lwm.tokenizers import VQGAN

            model.init_codes_from(VQGAN.from_pretrained(config.processor.vqgan).code_vectors(), seed=config.seed)
    else:
        raise ConfigError(
            f"model.name_or_path={source!r} is neither a preset ({', '.join(LWMConfig.preset_names())}), "
            "a model config .json file nor a folder with a config.json"
        )
    # The export says how long a context the model was trained for: `lwm chat` and `lwm eval` read it.
    model.config.max_position_embeddings = max(model.config.max_position_embeddings, stage.seq_len)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    freeze(model, config.model.trainable)
    return model.train()  # from_pretrained leaves eval mode, which would also turn checkpointing off


def load_drawing(config: TrainConfig):
    """The `DrawingConfig` of `processor.drawing` that the exports carry, or None when not set."""
    if config.processor.drawing is None:
        return None
    from lwm.generation.vision import DrawingConfig

    try:
        return DrawingConfig.from_json(config.processor.drawing)
    except ValueError as error:
        raise ConfigError(f"processor.drawing: {error}") from None


def load_processor(config: TrainConfig):
    """The configured text tokenizer + VQGAN as an `LWMProcessor` for the exports, or None when not set."""
    if config.processor.tokenizer is None:
        return None
    from lwm.tokenizers import VQGAN, LWMProcessor, load_text_tokenizer

    try:
        tokenizer = load_text_tokenizer(config.processor.tokenizer)
        vqgan = VQGAN.from_pretrained(config.processor.vqgan)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"processor: {error}") from None
    return LWMProcessor(tokenizer, vqgan, max_frames=config.processor.max_frames,
                        single_turn=config.processor.single_turn)


def freeze(model: torch.nn.Module, trainable: list[str]) -> None:
    matched = 0
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(fnmatch.fnmatchcase(name, pattern) for pattern in trainable))
        matched += parameter.requires_grad
    if not matched:
        raise ConfigError(f"model.trainable={trainable} matches no parameter name (e.g. 'vision_head.*')")


def parameter_groups(model: torch.nn.Module, optimizer: OptimizerConfig) -> list[dict]:
    """The trainable parameters in one optimiser group per learning rate (`optimizer.lr_scale`), plain lr first."""
    groups: dict[float, list[torch.nn.Parameter]] = {1.0: []}
    matched = set()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        pattern = next((pattern for pattern in optimizer.lr_scale if fnmatch.fnmatchcase(name, pattern)), None)
        matched.add(pattern)
        groups.setdefault(optimizer.lr_scale.get(pattern, 1.0), []).append(parameter)
    unmatched = [pattern for pattern in optimizer.lr_scale if pattern not in matched]
    if unmatched:
        raise ConfigError(f"optimizer.lr_scale: {unmatched} match no trainable parameter name (e.g. 'vision_grid.*')")
    return [{"params": params, "lr": optimizer.lr * scale} for scale, params in groups.items() if params]


def lr_multiplier(schedule: ScheduleConfig, total_steps: int) -> Callable[[int], float]:
    """Linear warm-up to 1, then constant or cosine down to `min_lr_ratio` at the stage's last step."""

    def multiplier(step: int) -> float:
        if step < schedule.warmup_steps:
            return (step + 1) / schedule.warmup_steps
        if schedule.decay == "constant":
            return 1.0
        span = max(1, total_steps - schedule.warmup_steps)
        progress = min(1.0, (step - schedule.warmup_steps) / span)
        return schedule.min_lr_ratio + (1 - schedule.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


def deepspeed_config(config: TrainConfig) -> dict:
    extra = {}
    if config.parallel.deepspeed_config:
        import json

        path = Path(config.parallel.deepspeed_config)
        if not path.is_file():
            raise ConfigError(f"parallel.deepspeed_config: no file {path}")
        extra = json.loads(path.read_text())
        owned = sorted(set(extra) & set(TRAINER_OWNED_DEEPSPEED_KEYS))
        if owned or "stage" in extra.get("zero_optimization", {}):
            raise ConfigError(
                f"{path} sets {owned or ['zero_optimization.stage']}, which the training config owns "
                "(batch.*, optimizer.*, precision, parallel.zero_stage)"
            )
    optimizer = config.optimizer
    return {
        **extra,
        "train_micro_batch_size_per_gpu": config.batch.micro_batch_size,
        "gradient_accumulation_steps": config.batch.grad_accum_steps,
        "gradient_clipping": optimizer.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": optimizer.lr, "betas": optimizer.betas, "eps": optimizer.eps,
                "weight_decay": optimizer.weight_decay,
                "torch_adam": True,  # torch's AdamW: no DeepSpeed op to compile
            },
        },
        "zero_optimization": {**extra.get("zero_optimization", {}), "stage": config.parallel.zero_stage},
        "bf16": {"enabled": config.precision == "bf16"},
        "steps_per_print": 2**31 - 1,  # our own progress bar and logs report
    }


class Trainer:
    """Runs the configured stages; `resume="auto"` continues from the last complete checkpoint."""

    def __init__(self, config: TrainConfig, resume: str | None = None, batches: BatchesFactory = packed_batches):
        if resume not in (None, "auto"):
            raise ConfigError(f"resume must be 'auto' or None, got {resume!r}")
        self.config, self.resume, self.make_batches = config, resume, batches
        self.output_dir = Path(config.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        init_distributed()
        try:
            self.mesh = build_mesh(config.parallel.sp_size)
        except ValueError as error:
            raise ConfigError(f"parallel.{error}") from None
        self.is_main = self.mesh.rank == 0
        if self.is_main:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        self.processor = load_processor(config)  # on every rank, so that a bad path stops them all
        self.drawing = load_drawing(config)

    def stage_export_dir(self, index: int) -> Path:
        return self.output_dir / "pretrained" / f"stage{index}"

    def run(self) -> Path:
        """Trains every stage; returns the folder of the final `save_pretrained` export."""
        resumed = self._latest_checkpoint() if self.resume == "auto" else None
        if self.resume == "auto" and resumed is None:
            self._print(f"no checkpoint in {self.checkpoint_dir}: starting from scratch")
        first_stage = resumed["stage"] if resumed else 0
        self.metrics = MetricsLogger(
            self.config.logging.backend, self.output_dir, enabled=self.is_main,
            resumed_step=self.global_step(first_stage, resumed["step"]) if resumed else None,
        )
        try:
            for index in range(first_stage, len(self.config.stages)):
                self._run_stage(index, resumed if index == first_stage else None)
        finally:
            self.metrics.close()
        return self.stage_export_dir(len(self.config.stages) - 1)

    def export_latest(self, directory: str | Path | None = None) -> Path:
        """`save_pretrained` of the last complete checkpoint, to `directory` (default OUTPUT_DIR/pretrained/<its tag>)."""
        latest = self._latest_checkpoint()
        if latest is None:
            raise FileNotFoundError(f"no checkpoint to export in {self.checkpoint_dir}")
        engine = self._stage_engine(latest["stage"])
        checkpoint.load_checkpoint(engine, self.checkpoint_dir, latest["tag"])
        target = Path(directory) if directory else self.output_dir / "pretrained" / latest["tag"]
        checkpoint.export_pretrained(engine, target, self.processor, self.drawing)
        engine.destroy()
        return target

    def _latest_checkpoint(self) -> dict | None:
        tag = checkpoint.latest_tag(self.checkpoint_dir)
        if tag is None:
            return None
        stage, step = (int(part) for part in tag.removeprefix("stage").split("-step"))
        return {"tag": tag, "stage": stage, "step": step}

    def _run_stage(self, index: int, resumed: dict | None) -> None:
        config, stage = self.config, self.config.stages[index]
        engine = self._stage_engine(index)
        batches = self.make_batches(config.stage_data(index), stage, config.batch.micro_batch_size, self.mesh)
        step = 0
        if resumed:
            state = checkpoint.load_checkpoint(engine, self.checkpoint_dir, resumed["tag"])
            batches.load_state_dict(state["batches"])
            step = state["step"]
            self._print(f"resumed stage {index} at step {step} from {self.checkpoint_dir / resumed['tag']}")
        StageRun(self, index, engine, batches, step).run()
        checkpoint.export_pretrained(engine, self.stage_export_dir(index), self.processor, self.drawing)
        self._print(f"stage {index} done: weights exported to {self.stage_export_dir(index)}")
        engine.destroy()

    def _stage_engine(self, index: int):
        """The DeepSpeed engine of stage `index`, its model starting from the previous stage's export."""
        import deepspeed

        stage = self.config.stages[index]
        start_from = str(self.stage_export_dir(index - 1)) if index else None
        model = build_model(self.config, stage, self.mesh, start_from)
        if self.config.parallel.zero_stage == 3:
            # The loss reads the heads' weights outside their modules' forward (lwm.model.loss): ZeRO-3
            # must gather them for the model's forward, not only for the heads' own.
            for head in (model.lm_head, model.vision_head):
                deepspeed.zero.register_external_parameter(model, head.weight)
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=parameter_groups(model, self.config.optimizer),
            config=deepspeed_config(self.config),
            lr_scheduler=lambda optimizer: LambdaLR(optimizer, lr_multiplier(self.config.schedule, stage.steps)),
        )
        return engine

    def global_step(self, stage_index: int, step: int) -> int:
        return sum(stage.steps for stage in self.config.stages[:stage_index]) + step

    def _print(self, message: str) -> None:
        if self.is_main:
            tqdm.write(f"[lwm train] {message}")


class StageRun:
    """The optimiser steps of one stage."""

    def __init__(self, trainer: Trainer, index: int, engine, batches: Batches, step: int):
        self.trainer, self.index, self.engine, self.batches, self.step = trainer, index, engine, batches, step
        self.config, self.mesh = trainer.config, trainer.mesh
        self.stage = self.config.stages[index]
        self.vocab = engine.module.config.vocab_size
        self.device = engine.device
        self.fp32_grad_norm: float | None = None

    def run(self) -> None:
        stage, config = self.stage, self.config
        tokens_per_step = (
            config.batch.micro_batch_size * config.batch.grad_accum_steps * self.mesh.dp_size * stage.seq_len
        )
        bar = tqdm(
            total=stage.steps, initial=self.step, disable=not (self.trainer.is_main and config.logging.progress_bar),
            desc=f"stage {self.index} ({stage.name or f'{stage.seq_len} tokens'})", unit="step", dynamic_ncols=True,
        )
        every = config.checkpoint.every_steps
        while self.step < stage.steps:
            lr = self.engine.get_lr()[0]  # the rate this step uses (the scheduler moves on after it)
            started = time.perf_counter()
            losses = self.optimizer_step()
            self.step += 1
            elapsed = time.perf_counter() - started
            grad_norm = self.engine.get_global_grad_norm()
            grad_norm = self.fp32_grad_norm if grad_norm is None else float(grad_norm)
            if grad_norm is not None and not math.isfinite(grad_norm):
                self._diverged(f"the gradient norm is {grad_norm}", self.step)
            scalars = {**losses, "lr": lr, "tokens_per_s": tokens_per_step / elapsed, "stage": self.index}
            if grad_norm is not None:
                scalars["grad_norm"] = grad_norm
            if self.step % config.logging.every_steps == 0 or self.step == stage.steps:
                self.trainer.metrics.log(self.trainer.global_step(self.index, self.step), scalars)
            bar.update(1)
            bar.set_postfix(
                loss=f"{losses['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_step / elapsed:,.0f}",
                **({"gnorm": f"{grad_norm:.3f}"} if grad_norm is not None else {}),
            )
            if (every and self.step % every == 0) or self.step == stage.steps:
                self.save()
            export_every = config.checkpoint.export_every_steps
            if export_every and self.step % export_every == 0 and self.step < stage.steps:
                checkpoint.export_pretrained(
                    self.engine, self.trainer.output_dir / "pretrained" / self._tag(), self.trainer.processor,
                    self.trainer.drawing,
                )
        bar.close()

    def optimizer_step(self) -> dict[str, float]:
        """grad_accum_steps micro-batches, then DeepSpeed's optimiser step; returns the mean losses."""
        totals: dict[str, float] = {}
        accumulation = self.config.batch.grad_accum_steps
        for _ in range(accumulation):
            for name, value in self.micro_step(next(self.batches)).items():
                totals[name] = totals.get(name, 0.0) + value / accumulation
        return totals

    def micro_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        inputs = model_inputs(batch, self.engine.module, self.mesh)
        inputs = {name: tensor.to(self.device) for name, tensor in inputs.items()}
        denominators = self.global_denominators(inputs["shift_labels"], inputs["loss_weights"])
        out = self.engine(**inputs, loss_denominators=denominators, sequence_parallel=self.mesh.sequence_parallel)
        parts = torch.stack([out.loss, out.text_loss, out.vision_loss]).detach().float()
        dist.all_reduce(parts)  # the shards' losses add up to the global micro-batch's
        loss, text_loss, vision_loss = parts.tolist()
        if not math.isfinite(loss):
            self._diverged(f"the loss is {loss}", self.step + 1)
        # DeepSpeed averages gradients over its data-parallel world, i.e. all dp × sp ranks; each
        # rank's loss is already its share of the global loss, so scale the average back to the sum.
        self.engine.backward(out.loss * self.engine.dp_world_size)
        if self.engine.is_gradient_accumulation_boundary() and not self.engine.zero_optimization():
            self.fp32_grad_norm = self.unsharded_grad_norm()
        self.engine.step()
        return {"loss": loss, "text_loss": text_loss, "vision_loss": vision_loss}

    def unsharded_grad_norm(self) -> float:
        """Without ZeRO, DeepSpeed clips but does not report the norm; the gradients are whole here."""
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

    def global_denominators(self, targets: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (text, vision) loss-weight sums over the whole global micro-batch."""
        text, vision = modality_weights(targets, weights, self.vocab)
        sums = torch.stack([text.sum(), vision.sum()])
        dist.all_reduce(sums)
        return sums[0], sums[1]

    def save(self) -> None:
        state = {"stage": self.index, "step": self.step, "batches": self.batches.state_dict()}
        checkpoint.save_checkpoint(
            self.engine, self.trainer.checkpoint_dir, self._tag(), state, self.config.checkpoint.keep_last
        )

    def _tag(self) -> str:
        return checkpoint.checkpoint_tag(self.index, self.step)

    def _diverged(self, what: str, step: int) -> None:
        last = checkpoint.latest_tag(self.trainer.checkpoint_dir)
        kept = f"the last good checkpoint is {self.trainer.checkpoint_dir / last}" if last else "no checkpoint was saved yet"
        raise TrainingDiverged(
            f"stopping: {what} at stage {self.index}, step {step}; {kept}. "
            "Lower optimizer.lr or raise schedule.warmup_steps and resume with --resume auto."
        )


