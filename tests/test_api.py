"""The `LWM` Python API on a tiny random model: every media form, greedy answers checked against a
plain argmax loop without cache, streaming, seeds, drawing, continuation and clear errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from lwm import media
from lwm.api import LWM, ContextLengthError, Video
from lwm.tokenizers import LWMProcessor
from tests.helpers.tiny import CONTEXT, RESOLUTION


@pytest.fixture(scope="module")
def lwm(tiny_model_dir):
    return LWM.from_pretrained(tiny_model_dir)


def reference_greedy(lwm, prompt_ids, max_new_tokens):
    """Argmax over the text logits, recomputing the whole sequence each step (no cache)."""
    ids, vocab, out = prompt_ids[None], lwm.processor.text_vocab_size, []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(lwm.model(ids).logits[0, -1, :vocab].argmax())
            if token == lwm.processor.eos_token_id:
                break
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


def test_a_missing_bundled_model_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr("lwm.api.BUNDLED_DIR", tmp_path)  # a package installed without its lwm/bundled/
    with pytest.raises(FileNotFoundError, match=r"bundled model is not shipped yet.*--model DIR"):
        LWM.from_pretrained("bundled")
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        LWM.from_pretrained("/nonexistent/model")


def test_greedy_answer_matches_an_uncached_argmax_loop(lwm, media_dir):
    question = "What is in the image?"
    image = {"type": "image", "path": str(media_dir / "photo.png")}
    messages = [{"role": "user", "content": [{"type": "text", "text": question}, image]}]
    stream = lwm.chat(messages, stream=True, max_new_tokens=6)
    pieces = list(stream)
    expected = reference_greedy(lwm, lwm.chat_prompt(messages), 6)
    assert stream.ids == expected
    assert "".join(pieces) == stream.text
    assert stream.finish_reason == ("length" if len(expected) == 6 else "stop")
    assert stream.prompt_tokens == len(lwm.chat_prompt(messages))
    assert lwm.answer(media_dir / "photo.png", question, max_new_tokens=6) == stream.text


def test_every_media_form_gives_the_same_answer(lwm, media_dir):
    path = media_dir / "photo.png"
    frames = media.load_image(path)
    forms = [str(path), path, path.read_bytes(), frames, Image.open(path)]
    answers = {lwm.answer(form, "Describe it.", max_new_tokens=4) for form in forms}
    assert len(answers) == 1

    video_path = media_dir / "clip.mp4"
    video_frames = media.load_video(video_path)
    video_forms = [video_path, video_path.read_bytes(), video_frames, Video(video_frames, fps=4)]
    assert len({lwm.caption(form, max_new_tokens=4) for form in video_forms}) == 1


def test_video_frames_are_capped_at_max_frames(lwm, media_dir):
    assert lwm.load_media(media_dir / "clip.mp4").shape[0] == 6
    capped = LWM(lwm.model, lwm.processor, max_frames=2)
    assert capped.load_media(media_dir / "clip.mp4").shape[0] == 2


def test_max_frames_is_decided_once_by_the_processor(lwm):
    """A model folder that samples 4 frames (as the bundled one) reads 8 when told: the processor re-samples
    nothing behind the loaded frames."""
    video = Video(np.random.default_rng(0).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8))
    four = LWM(lwm.model, LWMProcessor(lwm.processor.tokenizer, lwm.processor.vqgan, max_frames=4))
    eight = LWM(four.model, four.processor, max_frames=8)

    def frames_in(model: LWM) -> int:  # one <eof> or <eov> closes each frame
        ids = model.chat_prompt([{"role": "user", "content": [{"type": "text", "text": "What?"},
                                                              {"type": "video", "video": video}]}])
        return int((ids >= lwm.processor.eof_token_id).sum())

    assert (four.max_frames, frames_in(four)) == (4, 4)
    assert (eight.max_frames, frames_in(eight)) == (8, 8)
    assert four.processor.config.max_frames == 4  # the override made a processor of its own


class FakeTokenizer:
    """Test double: decodes ids as the letters of a word list, like SentencePiece with "_" for "▁".

    Ids 0-3 spell "_the", "_red", "_ball", "." and id 9 is half of a two-byte character that id 10
    completes ("é"); a lone half decodes to U+FFFD, as byte fallback does.
    """

    pieces = {0: "_the", 1: "_red", 2: "_ball", 3: "."}

    def decode(self, ids, skip_special_tokens=True):
        text, pending = "", False
        for token in ids:
            if token == 9:
                pending = True
            elif token == 10:
                text, pending = text + ("é" if pending else "\ufffd"), False
            else:
                text += ("\ufffd" if pending else "") + self.pieces[token]
                pending = False
        text += "\ufffd" if pending else ""
        return text.replace("_", " ").removeprefix(" ")


def test_text_stream_pieces_join_to_the_text():
    from lwm.api import TextStream

    def tokens(ids):
        yield from (torch.tensor([i]) for i in ids)

    stream = TextStream(tokens([0, 1, 9, 10, 2, 3, 7]), FakeTokenizer(), eos_token_id=7, prompt_tokens=5)
    assert list(stream) == ["the", " red", "é", " ball", "."]
    assert stream.text == "the redé ball." and stream.finish_reason == "stop"
    assert stream.completion_tokens == 7  # EOS counts
    cut = TextStream(tokens([0, 9]), FakeTokenizer(), eos_token_id=7, prompt_tokens=5)
    assert list(cut) == ["the", "\ufffd"] and cut.finish_reason == "length"  # a dangling half is flushed
    garbage = TextStream(tokens([9, 9, 9, 9, 9, 0]), FakeTokenizer(), eos_token_id=7, prompt_tokens=5)
    assert list(garbage) == ["\ufffd", " the"]  # invalid bytes do not hold the stream back


def test_sampling_is_seeded_and_streams_can_stop_early(lwm):
    messages = [{"role": "user", "content": "tell me about the red ball"}]
    first = lwm.chat(messages, temperature=1.0, top_k=50, seed=7, max_new_tokens=8)
    assert lwm.chat(messages, temperature=1.0, top_k=50, seed=7, max_new_tokens=8) == first
    stream = lwm.chat(messages, stream=True, temperature=1.0, seed=7, max_new_tokens=50)
    next(stream)
    stream.close()
    assert 1 <= len(stream.ids) < 50 and stream.finish_reason is None


def test_special_token_spellings_stay_text(lwm):
    prompt = lwm.chat_prompt([{"role": "user", "content": "<s></s><vision><eof><eov></vision>"}])
    assert int((prompt >= lwm.processor.text_vocab_size).sum()) == 0
    assert prompt.tolist().count(lwm.processor.bos_token_id) == 1
    assert lwm.processor.eos_token_id not in prompt.tolist()


def test_context_limits_are_clear_errors(lwm):
    messages = [{"role": "user", "content": "hello"}]
    prompt_tokens = len(lwm.chat_prompt(messages))
    with pytest.raises(ContextLengthError, match=f"maximum context length is {CONTEXT} tokens. However, you requested "
                                                 f"{prompt_tokens + CONTEXT} tokens"):
        lwm.chat(messages, max_new_tokens=CONTEXT)
    long_video = np.zeros((80, RESOLUTION, RESOLUTION, 3), np.uint8)  # 80 frames x 17 tokens > 1024
    roomy = LWM(lwm.model, lwm.processor, max_frames=100)
    with pytest.raises(ContextLengthError, match=f"maximum context length is {CONTEXT}"):
        roomy.caption(long_video)
    with pytest.raises(ContextLengthError):
        lwm.generate_video("a ball", num_frames=80)


def test_bad_media_and_settings_are_clear_errors(lwm, media_dir):
    with pytest.raises(media.MediaError, match="not a supported image or video"):
        lwm.caption(media_dir / "notes.txt")
    with pytest.raises(media.MediaError, match="file not found"):
        lwm.caption(media_dir / "missing.png")
    with pytest.raises(ValueError, match="temperature"):
        lwm.chat([{"role": "user", "content": "hi"}], temperature=-1)
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        lwm.generate_image("  ")


def test_generate_image_is_a_seeded_pil_image(lwm):
    image = lwm.generate_image("a red cube", seed=1)
    assert isinstance(image, Image.Image) and image.size == (RESOLUTION, RESOLUTION) and image.mode == "RGB"
    assert np.array_equal(np.asarray(lwm.generate_image("a red cube", seed=1, progress=True)), np.asarray(image))
    assert not np.array_equal(np.asarray(lwm.generate_image("a red cube", seed=2)), np.asarray(image))


def test_generate_video_saves_and_continues(lwm, tmp_path):
    video = lwm.generate_video("a ball rolls left", num_frames=3, seed=0, fps=6)
    assert video.frames.shape == (3, RESOLUTION, RESOLUTION, 3) and video.fps == 6
    video.save(tmp_path / "ball.mp4")
    assert media.load_video(tmp_path / "ball.mp4").shape[0] == 3
    following = lwm.continue_video(tmp_path / "ball.mp4", num_frames=2, seed=0)
    assert following.frames.shape == (2, RESOLUTION, RESOLUTION, 3)
    assert lwm.continue_video(video, num_frames=1, prompt="a ball", seed=0).fps == 6


def test_continuation_is_asked_in_the_chat_turn_it_is_trained_on(lwm):
    from lwm.generation import vision
    from lwm.generation.sampling import GREEDY
    from lwm.tokenizers.processing_lwm import CONTINUATION_REQUEST

    video = lwm.generate_video("a ball", num_frames=2, seed=0)
    codes = torch.from_numpy(lwm.processor.encode_media({"type": "video", "frames": video.frames}))
    request = [{"role": "user", "content": [{"type": "text", "text": CONTINUATION_REQUEST}, {"type": "video", "codes": codes}]}]
    prompt = lwm.processor.apply_chat_template(request, add_generation_prompt=True, generation_mode="vision")["input_ids"]
    expected = vision.generate_video(
        lwm.model, prompt, None, num_frames=2, frame_shape=tuple(codes.shape[-2:]),
        first_frame_sampling=GREEDY, sampling=GREEDY,
    )
    following = lwm.continue_video(video, num_frames=2, temperature=0)
    np.testing.assert_array_equal(following.frames, lwm._decode_codes(expected))


def test_a_model_folder_says_how_it_draws(lwm, tmp_path):
    from lwm.generation import vision
    from lwm.generation.sampling import GREEDY

    assert lwm.drawing == vision.DrawingConfig()  # no drawing_config.json: LWM's settings
    drawing = vision.DrawingConfig(image=GREEDY, video_procedure="single_pass", video_first_frame=GREEDY,
                                   video=GREEDY, continuation=GREEDY, video_frames=3)
    LWM(lwm.model, lwm.processor, drawing=drawing).save_pretrained(tmp_path)
    own = LWM.from_pretrained(tmp_path)
    assert own.drawing == drawing
    video = own.generate_video("a ball")
    expected = vision.text_to_video(own.model, own.processor, "a ball", num_frames=3, procedure="single_pass",
                                    first_frame_sampling=GREEDY, sampling=GREEDY)
    np.testing.assert_array_equal(video.frames, own._decode_codes(expected))
    image = own.generate_image("a ball")
    np.testing.assert_array_equal(np.asarray(image), own._decode_codes(
        vision.text_to_image(own.model, own.processor, "a ball", sampling=GREEDY))[0])
    # the caller's settings win: a seeded draw at temperature 1 is LWM's sampling with that seed
    assert not np.array_equal(np.asarray(own.generate_image("a ball", temperature=1.0, seed=3)), np.asarray(image))
    (tmp_path / vision.DRAWING_CONFIG_NAME).write_text('{"video_procedure": "twice"}')
    with pytest.raises(ValueError, match="drawing_config.json: not a drawing config"):
        LWM.from_pretrained(tmp_path)


def test_processor_and_model_must_match(lwm):
    from lwm.model import LWMConfig, LWMForCausalLM

    other = LWMForCausalLM(LWMConfig.from_preset("tiny"))
    with pytest.raises(ValueError, match="does not match the model"):
        LWM(other, lwm.processor)
    side = round(lwm.processor.codes_per_frame**0.5)
    gridded = LWMForCausalLM(LWMConfig(**{**lwm.model.config.to_dict(), "vision_grid_size": side + 1}))
    with pytest.raises(ValueError, match=f"code grid is {side + 1} x {side + 1}, but the processor's frames have"):
        LWM(gridded, lwm.processor)


def test_device_map_auto_with_disk_offload_gives_the_same_answer(lwm, tiny_model_dir, media_dir, tmp_path):
    offloaded = LWM.from_pretrained(
        tiny_model_dir, device_map="auto", max_memory={"cpu": 60_000},
        offload_folder=tmp_path / "offload",
    )
    assert "disk" in set(offloaded.model.hf_device_map.values())
    question = "What is in the image?"
    assert offloaded.answer(media_dir / "photo.png", question, max_new_tokens=5) == lwm.answer(
        media_dir / "photo.png", question, max_new_tokens=5
    )
