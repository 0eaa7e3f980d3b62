from transformers import AutoConfig, AutoModelForCausalLM

from lwm.model.configuration_lwm import LWMConfig
from lwm.model.modeling_lwm import LWMForCausalLM, lwm_loss

AutoConfig.register("lwm", LWMConfig)
AutoModelForCausalLM.register(LWMConfig, LWMForCausalLM)

__all__ = ["LWMConfig", "LWMForCausalLM", "lwm_loss"]
