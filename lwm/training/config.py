"""Configuration files: YAML mapped onto dataclasses, with dotted `key=value` overrides.

    config = load_config("configs/train/tiny-world.yaml", ["optimizer.lr=3e-4", "stages.0.steps=20"])

Every field is typed; a YAML file or an override naming an unknown key, or giving a value of the
wrong type, is refused with the dotted path of the problem. Values of overrides are read as YAML
scalars (`1e-4`, `true`, `[a, b]`, `null`). `read_config` does this for any dataclass: `lwm train`
reads a `TrainConfig` (below), `lwm tokenizer train` a `lwm.training.vqgan.VQGANTrainConfig`.

A training run is a list of **stages** run in order, each starting from the weights the previous one
ended with (LWM's progressive context: the sequence length and RoPE θ grow from stage to stage). A
stage without its own `data` uses the top-level `data`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lwm.model import yarn_rope
from lwm.parallel import check_length


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key."""


@dataclass
class ModelConfig:
    # A preset of lwm/presets/models/ ("tiny", "lwm-7b"), or a folder holding an LWM or a text-only
    # LLaMA checkpoint (e.g. LWM-Text: its vision table and head start newly initialised).
    name_or_path: str = "tiny"
    # Attention backend with sp_size = 1 ("sdpa", "blockwise", "flash_attention_2"); sp_size > 1 always uses "ring".
    attn_implementation: str = "blockwise"
    gradient_checkpointing: bool = False
    # The model's code grid (LWMConfig.vision_grid_size, the side of a frame's grid; 0: none) and what it
    # gives a code: learned row and column vectors (vision_grid_embedding) and rotary axes
    # (vision_rope_3d). None keeps what the model has.
    vision_grid_size: int | None = None
    vision_grid_embedding: bool | None = None
    vision_rope_3d: bool | None = None
    # A model made from a preset starts its codes' rows of the vision table and head from the VQGAN's code
    # vectors (processor.vqgan; LWMForCausalLM.init_codes_from) instead of at random.
    init_codes_from_vqgan: bool = False
    # Glob patterns over parameter names; parameters matching none of them are frozen.
    trainable: list[str] = field(default_factory=lambda: ["*"])


@dataclass
class DataConfig:
    path: str = ""  # a dataset folder written by `lwm data tokenize`
    mixture: dict[str, float] | None = None  # task -> weight; None: proportional to each task's size
    seed: int = 0
    overlong: Literal["truncate", "drop"] = "truncate"
    open_rows: int = 4  # rows the packer keeps open for first-fit
    # Also train the vision tokens of prompts (lwm.data.packing): every video becomes next-frame prediction.
    train_prompt_vision: bool = False
    # The share of the codes the model reads that are replaced by other codes of their example, their
    # targets kept (lwm.data.packing.VisionNoise): training to continue from frames like its own samples.
    vision_noise: float = 0.0


@dataclass
class ProcessorConfig:
    # The text tokenizer and VQGAN folders the data was tokenized with. When both are set, every export
    # also holds the processor, so it is a whole LWM folder (`LWM.from_pretrained`, `lwm chat`).
    tokenizer: str | None = None
    vqgan: str | None = None
    max_frames: int | None = None  # frames the exported processor samples from an input video
    single_turn: bool = False  # the data has one user turn per chat (lwm.tokenizers.processing_lwm)
    # A drawing_config.json (lwm.generation.vision.DrawingConfig) written into every export: how the
    # model draws by default. None: the exports have none, and the model draws with LWM's settings.
    drawing: str | None = None


@dataclass
class YarnConfig:
    """YaRN's RoPE for a stage longer than the model's trained length (transformers' "yarn" rope type).

    With factor = seq_len / original_length, a frequency that turns fewer than `beta_slow` times over
    `original_length` tokens is interpolated (slowed by the factor), one that turns more than `beta_fast`
    times is kept, and those between are mixed along a ramp. Keeping every frequency that turns at least
    twice (`beta_fast: 2`) and the attention temperature (`attention_factor: 1`) leaves what the model
    learnt within its trained length as it was: docs/bundled-model.md, "Long context". `attention_factor`
    None is YaRN's 0.1 ln(factor) + 1.
    """

    original_length: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None


@dataclass
class StageConfig:
    seq_len: int
    rope_theta: float
    steps: int
    name: str = ""
    data: DataConfig | None = None  # None: the top-level data
    yarn: YarnConfig | None = None  # None: plain RoPE at rope_theta

    def rope_parameters(self) -> dict:
        """The stage's RoPE as transformers' `rope_parameters`."""
        if self.yarn is None:
            return {"rope_type": "default", "rope_theta": self.rope_theta}
        yarn = self.yarn
        return yarn_rope(self.rope_theta, self.seq_len / yarn.original_length, yarn.original_length,
                         yarn.beta_fast, yarn.beta_slow, yarn.attention_factor)


@dataclass
class ParallelConfig:
    sp_size: int = 1  # ranks per sequence-parallel (ring) group; dp = world size / sp_size
    zero_stage: Literal[0, 1, 2, 3] = 0
    # Extra DeepSpeed settings (offload, bucket sizes, ...), e.g. configs/deepspeed/zero3-offload.json.
    # Keys the trainer sets from this config (batch, optimiser, precision, clipping, zero stage) are refused there.
    deepspeed_config: str | None = None


@dataclass
class BatchConfig:
    micro_batch_size: int = 1  # rows per data-parallel rank per forward
    grad_accum_steps: int = 1


@dataclass
class OptimizerConfig:
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    # Glob pattern over parameter names -> a factor on lr for the parameters it matches (the first
    # pattern that matches wins), e.g. {"vision_grid.*": 20} for tables that start at zero in a model
    # that is otherwise trained already.
    lr_scale: dict[str, float] = field(default_factory=dict)


@dataclass
class ScheduleConfig:
    warmup_steps: int = 0
    decay: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.1  # cosine ends at lr · min_lr_ratio


@dataclass
class LoggingConfig:
    backend: Literal["tensorboard", "jsonl"] = "jsonl"
    every_steps: int = 1
    progress_bar: bool = True


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # 0: only at the end of each stage
    keep_last: int = 2
    export_every_steps: int = 0  # save_pretrained exports besides the final one; 0: none


@dataclass
class TrainConfig:
    output_dir: str
    stages: list[StageConfig]
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0

    def stage_data(self, index: int) -> DataConfig:
        return self.stages[index].data or self.data


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """The `lwm train` config of a YAML file and its overrides, checked as a whole (`validate`)."""
    config = read_config(TrainConfig, path, overrides)
    validate(config)
    return config


def read_config(cls, path: str | Path, overrides: list[str] = ()):
    """The dataclass `cls` from a YAML file and dotted `key=value` overrides, every key and type checked."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no config file at {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, got {type(raw).__name__}")
    for override in overrides:
        apply_override(raw, override)
    return build(cls, raw, "")


def apply_override(raw: dict, override: str) -> None:
    """Sets `a.b.0.c=value` in the raw (YAML) mapping; list items are addressed by index."""
    key, separator, text = override.partition("=")
    if not separator or not key:
        raise ConfigError(f"override {override!r} must look like key=value, e.g. optimizer.lr=1e-4")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        here = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, here)]
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {override!r}: {here} is a value, not a group of settings")
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key)] = value
    else:
        node[last] = value


def _list_index(items: list, part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(f"{where}: the list has {len(items)} items; use an index in [0, {len(items)})")
    return int(part)


def build(cls, raw, where: str):
    """The dataclass `cls` from a raw mapping, checking every key and value type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping of settings, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown setting {_join(where, unknown[0])}; {where or 'the top level'} takes: {', '.join(fields)}"
        )
    values = {}
    for name, spec in fields.items():
        if name in raw:
            values[name] = convert(hints[name], raw[name], _join(where, name))
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required setting {_join(where, name)}")
    return cls(**values)


def convert(kind, value, where: str):
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return convert(inner, value, where)
    if dataclasses.is_dataclass(kind):
        return build(kind, value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [convert(args[0], item, f"{where}.{index}") for index, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {convert(args[0], k, where): convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot, or no exponent sign) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"{where}: unsupported setting type {kind}")


def validate(config: TrainConfig) -> None:
    if not config.stages:
        raise ConfigError("stages must list at least one {seq_len, rope_theta, steps} stage")
    if config.parallel.sp_size < 1:
        raise ConfigError("parallel.sp_size must be at least 1")
    for index, stage in enumerate(config.stages):
        where = f"stages.{index}"
        if stage.seq_len < 2:
            raise ConfigError(f"{where}.seq_len must be at least 2, got {stage.seq_len}")
        try:
            check_length(stage.seq_len, "zigzag", config.parallel.sp_size)
        except ValueError as error:
            raise ConfigError(f"{where}.seq_len: {error} (parallel.sp_size={config.parallel.sp_size})") from None
        if stage.steps < 1:
            raise ConfigError(f"{where}.steps must be at least 1, got {stage.steps}")
        if stage.rope_theta <= 0:
            raise ConfigError(f"{where}.rope_theta must be positive, got {stage.rope_theta}")
        if stage.yarn is not None:
            yarn = stage.yarn
            if not 0 < yarn.original_length < stage.seq_len:
                raise ConfigError(f"{where}.yarn.original_length must lie in (0, seq_len={stage.seq_len}): it is the "
                                  f"shorter length the model was trained at, got {yarn.original_length}")
            if not 0 < yarn.beta_slow <= yarn.beta_fast:
                raise ConfigError(f"{where}.yarn needs 0 < beta_slow <= beta_fast, got {yarn.beta_slow} and {yarn.beta_fast}")
            if yarn.attention_factor is not None and yarn.attention_factor <= 0:
                raise ConfigError(f"{where}.yarn.attention_factor must be positive, got {yarn.attention_factor}")
        if not config.stage_data(index).path:
            raise ConfigError(f"{where} has no data: set data.path (or {where}.data.path) to a tokenized dataset")
    checks = [
        (config.batch.micro_batch_size >= 1, "batch.micro_batch_size must be at least 1"),
        (config.batch.grad_accum_steps >= 1, "batch.grad_accum_steps must be at least 1"),
        (config.optimizer.lr > 0, "optimizer.lr must be positive"),
        (len(config.optimizer.betas) == 2, "optimizer.betas must be two numbers"),
        (config.optimizer.grad_clip >= 0, "optimizer.grad_clip must be >= 0 (0 disables clipping)"),
        (all(scale > 0 for scale in config.optimizer.lr_scale.values()), "optimizer.lr_scale factors must be positive"),
        (config.schedule.warmup_steps >= 0, "schedule.warmup_steps must be >= 0"),
        (0 <= config.schedule.min_lr_ratio <= 1, "schedule.min_lr_ratio must lie in [0, 1]"),
        (config.logging.every_steps >= 1, "logging.every_steps must be at least 1"),
        (config.checkpoint.every_steps >= 0, "checkpoint.every_steps must be >= 0"),
        (config.checkpoint.keep_last >= 1, "checkpoint.keep_last must be at least 1"),
        (config.checkpoint.export_every_steps >= 0, "checkpoint.export_every_steps must be >= 0"),
        (bool(config.model.trainable), "model.trainable must list at least one name pattern"),
        ((config.processor.tokenizer is None) == (config.processor.vqgan is None),
         "processor.tokenizer and processor.vqgan go together: set both (exports hold the processor) or neither"),
        (not config.model.init_codes_from_vqgan or config.processor.vqgan is not None,
         "model.init_codes_from_vqgan needs processor.vqgan, the VQGAN whose code vectors start the codes"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
