"""LWM-PyTorch: a PyTorch-native Large World Model over text, image and video tokens.

Public names are imported on first use, so `lwm --help` and light tools do not pay for torch.
"""

from importlib import import_module

_PUBLIC = {
    "LWM": "lwm.api",
    "Video": "lwm.api",
    "LWMConfig": "lwm.model",
    "LWMForCausalLM": "lwm.model",
    "LWMProcessor": "lwm.tokenizers",
    "VQGAN": "lwm.tokenizers",
    "VQGANConfig": "lwm.tokenizers",
}

__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'lwm' has no attribute {name!r}")
    return getattr(import_module(_PUBLIC[name]), name)
