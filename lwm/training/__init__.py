"""Training: the DeepSpeed trainer of the decoder (dp × sp, stages of growing context, exact resume),
the VQGAN trainer, and the one config mechanism both read (YAML mapped onto dataclasses, with dotted
`key=value` overrides)."""

from lwm.training.checkpoint import export_pretrained, latest_tag, load_checkpoint, save_checkpoint
from lwm.training.config import (
    BatchConfig,
    CheckpointConfig,
    ConfigError,
    DataConfig,
    LoggingConfig,
    ModelConfig,
    OptimizerConfig,
    ParallelConfig,
    ProcessorConfig,
    ScheduleConfig,
    StageConfig,
    TrainConfig,
    load_config,
    read_config,
)
from lwm.training.metrics import MetricsLogger
from lwm.training.perceptual import PerceptualDistance, load_perceptual_distance
from lwm.training.trainer import Trainer, TrainingDiverged, model_inputs, packed_batches
from lwm.training.vqgan import VQGANTrainConfig, find_media, load_eval_frames, load_vqgan_config, train_vqgan

__all__ = [
    "BatchConfig",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "LoggingConfig",
    "MetricsLogger",
    "ModelConfig",
    "OptimizerConfig",
    "ParallelConfig",
    "PerceptualDistance",
    "ProcessorConfig",
    "ScheduleConfig",
    "StageConfig",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "VQGANTrainConfig",
    "export_pretrained",
    "find_media",
    "latest_tag",
    "load_checkpoint",
    "load_config",
    "load_eval_frames",
    "load_perceptual_distance",
    "load_vqgan_config",
    "model_inputs",
    "packed_batches",
    "read_config",
    "save_checkpoint",
    "train_vqgan",
]
