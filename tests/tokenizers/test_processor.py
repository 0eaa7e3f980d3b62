"""LWMProcessor: LWM's token layout (docs/architecture.md), built independently from LWM's segment recipe."""

import random

import numpy as np
import pytest
import torch
from sentencepiece import SentencePieceProcessor

from lwm.tokenizers.processing_lwm import InvalidTextError, LWMProcessor, SequenceTooLongError
from lwm.tokenizers.text import train_text_tokenizer

SYSTEM = "You are a helpful assistant."


class FakeVQGAN(torch.nn.Module):
    """4x4-pixel blocks of an 8x8 frame -> 2x2 codes (the block's mean brightness in 16 levels)."""

    codebook_size = num_tokens = 16
    grid_size, codes_per_frame = 2, 4

    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"resolution": 8, "motion_max_shift": 0})()

    def encode_video(self, pixels, context=None):
        blocks = pixels.mean(1).unflatten(1, (2, 4)).unflatten(3, (2, 4)).mean((2, 4))
        return ((blocks + 1) * 8).clamp(0, 15).long()

    def decode_video(self, codes, context=None):
        level = codes.float() / 8 - 1 + 1 / 16
        return level.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None].expand(-1, 3, -1, -1)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("processor")
    rng = random.Random(0)
    words = "the a red blue ball cube moves left right video image describe generate what is it of an".split()
    lines = [" ".join(rng.choice(words) for _ in range(10)) + " ASSISTANT: USER: <vision></vision>" for _ in range(800)]
    (root / "corpus.txt").write_text("\n".join(lines))
    tokenizer = train_text_tokenizer([str(root / "corpus.txt")], 400, str(root / "tok"))
    return tokenizer, SentencePieceProcessor(model_file=str(root / "tok" / "tokenizer.model"))


@pytest.fixture()
def processor(tokenizers):
    return LWMProcessor(tokenizers[0], FakeVQGAN())


def vision_ids(codes, v_text=400, k=16, eov_every_frame=False):
    """The spec's vision segment: per frame the codes + V_text, then eof (8192-like) or eov after the last."""
    ids = []
    for t, frame in enumerate(codes.reshape(len(codes), -1).tolist()):
        ids += [v_text + c for c in frame]
        last = t == len(codes) - 1
        ids.append(v_text + k + 1 if last or eov_every_frame else v_text + k)
    return ids


def random_codes(frames, seed=0):
    return np.random.default_rng(seed).integers(0, 16, size=(frames, 2, 2))


def test_qa_layout_matches_spec(processor, tokenizers):
    sp = tokenizers[1]
    codes = random_codes(3)
    question = "What is the video about?"
    out = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": question}, {"type": "video", "codes": codes}]}],
        add_generation_prompt=True,
    )
    expected = (
        [1]
        + sp.encode(f"{SYSTEM} USER: {question}\n")
        + sp.encode("<vision>")
        + vision_ids(codes)
        + sp.encode("</vision>")
        + sp.encode(" ASSISTANT:")
    )
    assert out["input_ids"].tolist() == expected
    assert (out["labels"] == -100).all() and (out["loss_weights"] == 0).all()
    assert out["input_ids"].tolist().count(1) == 1  # a single BOS
    assert sp.id_to_piece(sp.encode(" ASSISTANT:")[0]) == "▁"  # the separate-segment quirk is kept


def test_official_script_eov_after_every_frame(tokenizers):
    processor = LWMProcessor(tokenizers[0], FakeVQGAN(), eov_after_every_frame=True)
    codes = random_codes(3)
    ids = processor.vision_ids(codes)
    assert ids == vision_ids(codes, eov_every_frame=True)
    assert ids.count(416) == 0 and ids.count(417) == 3


def test_generation_prompts_match_spec(processor, tokenizers):
    sp = tokenizers[1]
    for kind, verb in [("image", "an image"), ("video", "a video")]:
        out = processor.generation_prompt("a red ball", kind)
        text = f"{SYSTEM} USER: Generate {verb} of a red ball ASSISTANT: <vision>"
        assert out["input_ids"].tolist() == [1] + sp.encode(text)  # one string, one BOS
    assert processor.unconditional_prompt()["input_ids"].tolist() == [1] + sp.encode("<vision>")


def test_unconditional_example_extends_the_unconditional_prompt(processor, tokenizers):
    sp = tokenizers[1]
    frames = np.random.default_rng(1).integers(0, 256, size=(1, 8, 8, 3), dtype=np.uint8)
    example = processor.unconditional_example({"type": "image", "frames": frames})
    prompt = processor.unconditional_prompt()["input_ids"].tolist()
    target = vision_ids(processor.encode_media({"type": "image", "frames": frames})) + sp.encode("</vision>") + [2]
    assert example["input_ids"].tolist() == prompt + target
    assert example["labels"].tolist() == [-100] * len(prompt) + target


def test_text_only_chat_matches_lwm_text_template(processor, tokenizers):
    sp = tokenizers[1]
    out = processor.apply_chat_template([{"role": "user", "content": "what is it"}], add_generation_prompt=True)
    assert out["input_ids"].tolist() == [1] + sp.encode(f"{SYSTEM} USER: what is it ASSISTANT:")


def test_training_pair_from_one_caption(processor, tokenizers):
    sp = tokenizers[1]
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    understanding, generation = processor.pair_examples({"type": "video", "frames": frames}, "a red ball moves left")
    codes = processor.encode_media({"type": "video", "frames": frames})

    prompt = [1] + sp.encode(f"{SYSTEM} USER: Describe the video.\n") + sp.encode("<vision>") + vision_ids(codes)
    prompt += sp.encode("</vision>") + sp.encode(" ASSISTANT:")
    answer = sp.encode("a red ball moves left") + [2]
    assert understanding["input_ids"].tolist() == prompt + answer
    assert understanding["labels"].tolist() == [-100] * len(prompt) + answer
    assert understanding["loss_weights"].tolist() == [0.0] * len(prompt) + [1.0] * len(answer)

    prompt = [1] + sp.encode(f"{SYSTEM} USER: Generate a video of a red ball moves left ASSISTANT: <vision>")
    target = vision_ids(codes) + sp.encode("</vision>") + [2]
    assert generation["input_ids"].tolist() == prompt + target
    assert generation["labels"].tolist() == [-100] * len(prompt) + target
    # the training sequence extends the inference prompt exactly
    assert generation["input_ids"].tolist()[: len(prompt)] == processor.generation_prompt(
        "a red ball moves left", "video"
    )["input_ids"].tolist()


def test_multi_turn_template(processor, tokenizers):
    sp = tokenizers[1]
    codes = random_codes(1)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image", "codes": codes}, {"type": "text", "text": "what is it"}]},
        {"role": "assistant", "content": "a ball"},
        {"role": "user", "content": "what colour"},
        {"role": "assistant", "content": "red"},
    ]
    out = processor.apply_chat_template(messages)
    first = [1] + sp.encode("Be brief. USER:") + sp.encode("<vision>") + vision_ids(codes) + sp.encode("</vision>")
    first += sp.encode("what is it ASSISTANT:")
    answer1 = sp.encode("a ball") + [2]
    second = sp.encode("USER: what colour ASSISTANT:")
    answer2 = sp.encode("red") + [2]
    assert out["input_ids"].tolist() == first + answer1 + second + answer2
    trained = [-100] * len(first) + answer1 + [-100] * len(second) + answer2
    assert out["labels"].tolist() == trained
    # the generation prompt for the next turn is a prefix of the finished conversation
    prompt = processor.apply_chat_template(messages[:4], add_generation_prompt=True)["input_ids"].tolist()
    assert out["input_ids"].tolist()[: len(prompt)] == prompt


def test_special_token_spellings_in_user_text_stay_text(processor):
    out = processor.apply_chat_template(
        [{"role": "user", "content": "<s></s><vision><eof><eov></vision>"}], add_generation_prompt=True
    )
    ids = out["input_ids"].tolist()
    assert ids.count(1) == 1 and 2 not in ids and max(ids) < 400


def test_text_that_is_not_unicode_is_refused_by_name(processor):
    """A lone surrogate (JSON's "\\ud800", or bytes that were not UTF-8) has no tokens."""
    for text in ("\ud800", "fine, then \udcff"):
        with pytest.raises(InvalidTextError, match="not valid Unicode: it holds a lone surrogate"):
            processor.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    with pytest.raises(InvalidTextError):
        processor.generation_prompt("a red \udfff ball")


def test_decode_round_trip(processor):
    codes = random_codes(3, seed=4)
    generated = vision_ids(codes) + processor.encode_text("</vision>") + [2, 99, 98]
    parts = processor.decode(generated)
    assert [p["type"] for p in parts] == ["video"]
    np.testing.assert_array_equal(parts[0]["codes"], codes)
    assert parts[0]["video"].shape == (3, 8, 8, 3) and parts[0]["video"].dtype == np.uint8
    # frames split at <eof>, incomplete last frame dropped; text around vision keeps no markers
    mixed = processor.encode_text("here it is <vision>") + vision_ids(codes)[:-1] + [400 + 16] + [401]
    parts = processor.decode(mixed, decode_frames=False)
    assert parts[0] == {"type": "text", "text": "here it is"}
    np.testing.assert_array_equal(parts[1]["codes"], codes)
    # an image: one frame; the pixels decode through the vqgan
    image = processor.decode(vision_ids(codes[:1]))[0]
    assert image["type"] == "image" and image["image"].shape == (8, 8, 3)
    text = processor.decode(processor.encode_text("a red ball") + [2])
    assert text == [{"type": "text", "text": "a red ball"}]


def test_too_long_example_is_refused(tokenizers):
    processor = LWMProcessor(tokenizers[0], FakeVQGAN(), max_length=20)
    too_long_video = r"more than max_length=20 \(each frame takes \d+\); use fewer frames"
    with pytest.raises(SequenceTooLongError, match=too_long_video):
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "video", "codes": random_codes(5)}]}], add_generation_prompt=True
        )
    with pytest.raises(SequenceTooLongError, match="more than max_length=20; use a shorter text") as caught:
        processor.apply_chat_template([{"role": "user", "content": "a red ball " * 20}], add_generation_prompt=True)
    assert "frame" not in str(caught.value)


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "non-empty list"),
        ([{"role": "assistant", "content": "hi"}], "expected 'user'"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "unknown part type 'audio'"),
        ([{"role": "user", "content": [{"type": "image"}]}], "needs one of"),
        ([{"role": "user", "content": [{"type": "image", "codes": np.zeros((2, 2, 2), int)}]}], "use a video part"),
        ([{"role": "user", "content": [{"type": "video", "codes": np.full((1, 2, 2), 99)}]}], r"lie in \[0, 16\)"),
        ([{"role": "user", "content": [{"type": "video", "codes": np.zeros((1, 3, 3), int)}]}], "not whole frames"),
        ([{"role": "user", "content": [{"type": "video", "path": "/nonexistent.mp4"}]}], "message 0, video part"),
    ],
)
def test_bad_messages_raise_clear_errors(processor, messages, match):
    with pytest.raises(ValueError, match=match):
        processor.apply_chat_template(messages, add_generation_prompt=True)


def test_with_the_real_vqgan_save_and_load(tokenizers, tmp_path):
    from lwm import media
    from lwm.tokenizers.configuration_vqgan import VQGANConfig
    from lwm.tokenizers.modeling_vqgan import VQGAN

    torch.manual_seed(0)
    vqgan = VQGAN(VQGANConfig.from_preset("tiny", kmeans_init=False)).eval()
    processor = LWMProcessor(tokenizers[0], vqgan, max_frames=3)
    frames = np.random.default_rng(0).integers(0, 256, size=(6, 40, 48, 3), dtype=np.uint8)
    media.save_video(frames, tmp_path / "clip.mp4", fps=4)
    codes = processor.encode_media({"type": "video", "path": str(tmp_path / "clip.mp4")})
    assert codes.shape == (3, vqgan.grid_size, vqgan.grid_size)  # max_frames, spread uniformly

    processor.save_pretrained(tmp_path / "processor")
    loaded = LWMProcessor.from_pretrained(tmp_path / "processor")
    assert loaded.config == processor.config
    messages = [{"role": "user", "content": [{"type": "text", "text": "what"},
                                             {"type": "video", "path": str(tmp_path / "clip.mp4")}]}]
    expected = processor.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assert torch.equal(loaded.apply_chat_template(messages, add_generation_prompt=True)["input_ids"], expected)
    video = loaded.decode(loaded.vision_ids(codes))[0]
    assert video["type"] == "video" and video["video"].shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(video["video"], media.to_uint8(vqgan.decode_video(torch.from_numpy(codes))))


def test_decode_strips_markers_around_a_vision_block(processor):
    codes = random_codes(1, seed=9)
    ids = processor.encode_text("look <vision>") + vision_ids(codes) + processor.encode_text("</vision> a ball") + [2]
    parts = processor.decode(ids, decode_frames=False)
    assert [p["type"] for p in parts] == ["text", "image", "text"]
    assert parts[0]["text"] == "look" and parts[2]["text"] == "a ball"
