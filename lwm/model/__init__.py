"""The decoder: `LWMConfig` and `LWMForCausalLM` (a transformers Llama trunk with LWM's vision table and
head), its loss and its targets. Importing it registers both with transformers' Auto classes."""

from transformers import AutoConfig, AutoModelForCausalLM

from lwm.model.configuration_lwm import LWMConfig, yarn_rope
from lwm.model.loss import lwm_loss
from lwm.model.modeling_lwm import LWMForCausalLM, vision_grid_ids_of
from lwm.model.targets import IGNORE_INDEX, modality_weights, next_token_targets

AutoConfig.register("lwm", LWMConfig)
AutoModelForCausalLM.register(LWMConfig, LWMForCausalLM)

__all__ = [
    "IGNORE_INDEX",
    "LWMConfig",
    "LWMForCausalLM",
    "lwm_loss",
    "modality_weights",
    "next_token_targets",
    "vision_grid_ids_of",
    "yarn_rope",
]
