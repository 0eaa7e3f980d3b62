"""The text tokenizer: LLaMA-2 conventions and exact agreement with plain SentencePiece."""

import random

import pytest
from sentencepiece import SentencePieceProcessor
from transformers import AutoTokenizer

from lwm.tokenizers.text import load_text_tokenizer, tokenizer_from_sentencepiece, train_text_tokenizer

WORDS = "the a red blue green ball cube moves left right up down video image assistant user helpful you are what".split()


def write_corpus(path, lines=1500, seed=0):
    rng = random.Random(seed)
    text = "\n".join(
        " ".join(rng.choice(WORDS) for _ in range(12)) + " ASSISTANT: USER: <vision> </vision> 1234 héllo."
        for _ in range(lines)
    )
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_tokenizer")
    corpus = write_corpus(root / "corpus.txt")
    out = root / "tokenizer"
    tokenizer = train_text_tokenizer([str(corpus)], vocab_size=400, out_dir=str(out))
    return tokenizer, SentencePieceProcessor(model_file=str(out / "tokenizer.model")), out


def random_strings(count, seed=0):
    rng = random.Random(seed)
    alphabet = list("abcdefghijklmnopqrstuvwxyz ASITNU:<>/\n\t.,?!0123456789éü世界🙂") + [
        "<s>", "</s>", "<unk>", "<vision>", "</vision>", "<eof>", "<eov>", " ASSISTANT:", "  ", "vision",
    ]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(count)]


def test_llama2_conventions(trained):
    tokenizer, sp, _ = trained
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2, 0)
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
    assert len(tokenizer) == sp.get_piece_size() == 400
    assert tokenizer.encode("red ball") == [1] + sp.encode("red ball")  # BOS by default, no EOS
    # byte fallback: characters never seen in the corpus become <0xNN> pieces, never <unk>
    ids = tokenizer.encode("世界🙂", add_special_tokens=False)
    assert 0 not in ids and all(tokenizer.convert_ids_to_tokens(i).startswith("<0x") for i in ids[1:])
    assert tokenizer.decode(ids) == "世界🙂"


def test_encoding_equals_plain_sentencepiece(trained):
    tokenizer, sp, _ = trained
    # LWM's chat segments, which transformers' own LlamaTokenizer (v5) gets wrong for the leading space
    for text in [" ASSISTANT:", "<vision>", "</vision>", "You are a helpful assistant. USER: what is it?\n"]:
        assert tokenizer.encode(text, add_special_tokens=False) == sp.encode(text)
    assert sp.id_to_piece(sp.encode(" ASSISTANT:")[0]) == "▁"
    mismatches = [s for s in random_strings(1000) if tokenizer.encode(s, add_special_tokens=False) != sp.encode(s)]
    assert mismatches == []
    for text in random_strings(200, seed=1):
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == sp.decode(sp.encode(text))


def test_special_token_spellings_stay_text(trained):
    tokenizer, sp, _ = trained
    for text in ["<s>", "hi </s> there", "<unk>", "<s>You are", "<vision><eof><eov>"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert ids == sp.encode(text)
        assert not {0, 1, 2} & set(ids)
    # even when the caller asks for transformers' default special-token parsing of a plain call
    assert 1 not in tokenizer("<s>hello", add_special_tokens=False).input_ids


def test_save_and_reload_keeps_the_encoding(trained, tmp_path):
    tokenizer, sp, out = trained
    tokenizer.save_pretrained(tmp_path)
    from_json = load_text_tokenizer(tmp_path)  # tokenizer.json only
    from_auto = AutoTokenizer.from_pretrained(tmp_path)
    from_model_file = load_text_tokenizer(out / "tokenizer.model")
    for text in random_strings(200, seed=2):
        expected = sp.encode(text)
        for loaded in (from_json, from_auto, from_model_file):
            assert loaded.encode(text, add_special_tokens=False) == expected


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus not found"):
        train_text_tokenizer([str(tmp_path / "missing.txt")], 400, str(tmp_path / "out"))
    corpus = write_corpus(tmp_path / "c.txt", lines=10)
    with pytest.raises(ValueError, match="vocab_size must be at least"):
        train_text_tokenizer([str(corpus)], 100, str(tmp_path / "out"))
    (tmp_path / "junk.model").write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        tokenizer_from_sentencepiece(tmp_path / "junk.model")
    with pytest.raises(FileNotFoundError, match="no text tokenizer"):
        load_text_tokenizer(tmp_path / "empty_dir_that_is_missing")
