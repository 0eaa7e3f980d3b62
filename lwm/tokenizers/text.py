"""The text tokenizer: a LLaMA-2 style SentencePiece BPE model, used through transformers.

Conventions (LLaMA-2's): `<unk>` = 0, `<s>` (BOS) = 1, `</s>` (EOS) = 2, padding uses id 0, bytes that
are not in the vocabulary fall back to `<0xNN>` pieces, no text normalisation, and a dummy "▁" is
prepended to every separately encoded string.

Encoding is exactly plain SentencePiece (`SentencePieceProcessor.encode`), as LWM's training-era
tokenizer did (docs/official-weights.md#prompts-and-bos). transformers' own `LlamaTokenizer` does not guarantee that: since
transformers 5 it pre-tokenizes with `Metaspace`, which skips the dummy prefix when the text already
starts with a space, so `" ASSISTANT:"` (a segment of LWM's chat prompt) loses its leading "▁" token
under either `legacy` setting. We therefore build the `tokenizers` pipeline that `legacy=True`
conversion used to produce (normaliser: prepend "▁", then spaces -> "▁"; BPE with byte fallback;
no pre-tokeniser) and wrap it in a `PreTrainedTokenizerFast`, which saves and loads that pipeline
unchanged (`tokenizer.json`).

Text that spells a special token (`<s>`, `</s>`, `<unk>`) is encoded as plain text
(`split_special_tokens=True`): only code, never user input, inserts BOS/EOS ids.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from sentencepiece import SentencePieceTrainer, sentencepiece_model_pb2
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 0
SPIECE_UNDERLINE = "▁"

# SentencePiece piece types (sentencepiece_model.proto)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


def train_text_tokenizer(corpus_paths: list[str], vocab_size: int, out_dir: str) -> PreTrainedTokenizerFast:
    """Train a LLaMA-2 style SentencePiece BPE model on text files; write it and its transformers files.

    `out_dir` receives `tokenizer.model` (SentencePiece) and `tokenizer.json` + `tokenizer_config.json`
    (transformers). The vocabulary holds the 3 special pieces and 256 byte pieces, so `vocab_size`
    must leave room for merges beyond those and the corpus's characters.
    """
    for path in corpus_paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"text corpus not found: {path}")
    minimum = 3 + 256 + 1
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum} (3 special + 256 byte pieces + 1), got {vocab_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        prefix = os.path.join(work, "tokenizer")
        try:
            SentencePieceTrainer.train(
                input=",".join(str(p) for p in corpus_paths),
                model_prefix=prefix,
                vocab_size=vocab_size,
                model_type="bpe",
                unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=-1,
                byte_fallback=True,
                split_digits=True,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=True,
                allow_whitespace_only_pieces=True,
                character_coverage=0.99995,
                max_sentence_length=1 << 16,
                input_sentence_size=10_000_000,  # a random sample of huge corpora bounds memory
                shuffle_input_sentence=True,
                minloglevel=2,
            )
        except RuntimeError as error:
            raise ValueError(f"SentencePiece training failed: {error}") from None
        shutil.copyfile(prefix + ".model", out / "tokenizer.model")
    tokenizer = tokenizer_from_sentencepiece(out / "tokenizer.model")
    tokenizer.save_pretrained(out)
    return tokenizer


def load_text_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load the text tokenizer from a `tokenizer.model` file or from a directory.

    A directory's `tokenizer.model` wins when present (the official LLaMA-2/LWM directories ship one);
    otherwise its `tokenizer.json` is loaded as saved by `save_pretrained`.
    """
    path = Path(path)
    if path.is_file():
        return tokenizer_from_sentencepiece(path)
    if (path / "tokenizer.model").is_file():
        return tokenizer_from_sentencepiece(path / "tokenizer.model")
    if (path / "tokenizer.json").is_file():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        _check_conventions(tokenizer, str(path))
        return tokenizer
    raise FileNotFoundError(f"no text tokenizer at {path}: expected tokenizer.model or tokenizer.json")


def tokenizer_from_sentencepiece(model_file: str | os.PathLike) -> PreTrainedTokenizerFast:
    """A transformers tokenizer that encodes exactly as the SentencePiece BPE model `model_file`."""
    proto = _read_model_proto(model_file)
    vocab = {piece.piece: index for index, piece in enumerate(proto.pieces)}
    backend = Tokenizer(
        BPE(vocab=vocab, merges=_bpe_merges(proto), unk_token=UNK, fuse_unk=True, byte_fallback=True)
    )
    prefix = [normalizers.Prepend(SPIECE_UNDERLINE)] if proto.normalizer_spec.add_dummy_prefix else []
    backend.normalizer = normalizers.Sequence([*prefix, normalizers.Replace(" ", SPIECE_UNDERLINE)])
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace(SPIECE_UNDERLINE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            *([decoders.Strip(content=" ", left=1)] if proto.normalizer_spec.add_dummy_prefix else []),
        ]
    )
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)]
    )
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in (UNK, BOS, EOS)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=UNK,
        padding_side="left",
        split_special_tokens=True,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,
    )
    _check_conventions(tokenizer, str(model_file))
    return tokenizer


def _read_model_proto(model_file: str | os.PathLike) -> sentencepiece_model_pb2.ModelProto:
    try:
        data = Path(model_file).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"SentencePiece model not found: {model_file}") from None
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as error:  # protobuf raises its own DecodeError type
        raise ValueError(f"{model_file}: not a SentencePiece model ({error})") from None
    if not proto.pieces:
        raise ValueError(f"{model_file}: not a SentencePiece model (no pieces)")
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
        raise ValueError(f"{model_file}: only BPE SentencePiece models are supported (LLaMA-2 style)")
    spec = proto.normalizer_spec
    if spec.precompiled_charsmap or spec.remove_extra_whitespaces:
        raise ValueError(
            f"{model_file}: the model normalises text (rule {spec.name!r}, remove_extra_whitespaces="
            f"{spec.remove_extra_whitespaces}); LLaMA-2 style models use the identity rule"
        )
    return proto


def _bpe_merges(proto: sentencepiece_model_pb2.ModelProto) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's: a pair merges when the joined piece is in the vocabulary,
    earlier (higher-scoring) pieces first; splits of one piece are ordered by their halves' ids."""
    vocab = {piece.piece: index for index, piece in enumerate(proto.pieces)}
    ranked = []
    for index, piece in enumerate(proto.pieces):
        if piece.type != _NORMAL:
            continue
        text = piece.piece
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in vocab and right in vocab:
                ranked.append((-piece.score, index, vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _check_conventions(tokenizer: PreTrainedTokenizerFast, source: str) -> None:
    expected = {UNK: UNK_ID, BOS: BOS_ID, EOS: EOS_ID}
    actual = {token: tokenizer.convert_tokens_to_ids(token) for token in expected}
    if actual != expected:
        raise ValueError(f"{source}: special token ids {actual} differ from the LLaMA-2 convention {expected}")

