"""Generation: logits processors, the one decode loop with classifier-free guidance (on one process or
with the KV cache sharded over a sequence-parallel group), and drawing images and videos."""

from lwm.generation.cache import GrowingCache
from lwm.generation.logits_process import (
    FrameLayout,
    FrameStructureLogitsProcessor,
    TextOnlyLogitsProcessor,
    VisionOnlyLogitsProcessor,
)
from lwm.generation.sampling import (
    GREEDY,
    CachedSteps,
    SamplingConfig,
    as_batch,
    choose,
    generate_sharded,
    guide,
    iter_tokens,
    left_pad,
    sample,
)
from lwm.generation.sharded import ShardedCache, ShardedSteps
from lwm.generation.vision import (
    DRAWING_CONFIG_NAME,
    IMAGE_SAMPLING,
    VIDEO_SAMPLING,
    DrawingConfig,
    continue_video,
    generate_image,
    generate_video,
    text_to_image,
    text_to_video,
)

__all__ = [
    "DRAWING_CONFIG_NAME",
    "GREEDY",
    "IMAGE_SAMPLING",
    "VIDEO_SAMPLING",
    "CachedSteps",
    "DrawingConfig",
    "FrameLayout",
    "FrameStructureLogitsProcessor",
    "GrowingCache",
    "SamplingConfig",
    "ShardedCache",
    "ShardedSteps",
    "TextOnlyLogitsProcessor",
    "VisionOnlyLogitsProcessor",
    "as_batch",
    "choose",
    "continue_video",
    "generate_image",
    "generate_sharded",
    "generate_video",
    "guide",
    "iter_tokens",
    "left_pad",
    "sample",
    "text_to_image",
    "text_to_video",
]
