"""Tokens in and out: the SentencePiece text tokenizer, the VQGAN vision tokenizer, and `LWMProcessor`,
which lays chat messages with text, images and videos out as one sequence of ids (and back)."""

from lwm.tokenizers.configuration_vqgan import VQGANConfig
from lwm.tokenizers.modeling_vqgan import VQGAN, VQGANOutput
from lwm.tokenizers.processing_lwm import (
    CAPTION_REQUESTS,
    CONTINUATION_REQUEST,
    GENERATION_REQUESTS,
    PROCESSOR_CONFIG_NAME,
    SYSTEM_PROMPT,
    VQGAN_FOLDER,
    InvalidTextError,
    LWMProcessor,
    LWMProcessorConfig,
    SequenceTooLongError,
)
from lwm.tokenizers.text import load_text_tokenizer, tokenizer_from_sentencepiece, train_text_tokenizer

__all__ = [
    "CAPTION_REQUESTS",
    "CONTINUATION_REQUEST",
    "GENERATION_REQUESTS",
    "PROCESSOR_CONFIG_NAME",
    "SYSTEM_PROMPT",
    "VQGAN",
    "VQGANConfig",
    "VQGANOutput",
    "VQGAN_FOLDER",
    "InvalidTextError",
    "LWMProcessor",
    "LWMProcessorConfig",
    "SequenceTooLongError",
    "load_text_tokenizer",
    "tokenizer_from_sentencepiece",
    "train_text_tokenizer",
]
