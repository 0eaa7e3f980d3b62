import pytest
import torch
from transformers import LogitsProcessor

from lwm.generation.logits_process import FrameLayout, FrameStructureLogitsProcessor
from lwm.generation.sampling import GREEDY, SamplingConfig, left_pad, sample
from lwm.generation.vision import (
    IMAGE_SAMPLING,
    continue_video,
    generate_image,
    generate_video,
    text_to_image,
    text_to_video,
)
from lwm.model import LWMConfig, LWMForCausalLM
from lwm.tokenizers.processing_lwm import LWMProcessor
from tests.helpers.tiny import tiny_lm

FRAME = (2, 2)  # 4 codes per frame keeps the tests fast; LWM has 16 x 16
CONDITIONAL = [torch.tensor([1, 40, 41, 42, 43, 44, 45]), torch.tensor([1, 50, 51, 52])]
UNCONDITIONAL = torch.tensor([1, 60, 61])


@pytest.fixture(scope="module")
def model():
    model = tiny_lm()
    with torch.no_grad():  # reserved vision ids and text become the favourites: the constraints must hold
        model.vision_head.weight[model.config.num_vision_codes :].mul_(30)
        model.lm_head.weight.mul_(10)
    return model


@pytest.fixture(scope="module")
def grid_model(model):
    """The same model with a 2 x 2 code grid whose vectors are not zero: decoding must feed it each code's place."""
    grown = LWMForCausalLM(LWMConfig.from_preset("tiny", vision_grid_size=FRAME[0])).eval()
    grown.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        grown.vision_grid.rows.normal_()
        grown.vision_grid.columns.normal_()
    return grown


@pytest.fixture(scope="module")
def layout(model):
    return FrameLayout.from_config(model.config, FRAME[0] * FRAME[1])


def reference_greedy(model, layout, conditional, unconditional, scales, num_frames, block_done=0):
    """Greedy guided decoding written out plainly: one row, no padding, no cache, a full forward
    per step and branch. `scales[i]` is the guidance of step i; `block_done` ids of the vision
    block are already in the prompt. Returns the tokens and the guided logits of every step."""
    vocab, codes = model.config.vocab_size, layout.num_codes
    tokens, guided_logits = [], []
    for scale in scales:
        with torch.no_grad():
            cond = model(conditional[None]).logits[0, -1]
            uncond = model(unconditional[None]).logits[0, -1] if scale != 1 else cond
        guided = uncond + scale * (cond - uncond)
        frame, position = divmod(block_done + len(tokens), layout.frame_length)
        if position < layout.codes_per_frame:
            allowed = torch.arange(vocab, vocab + codes)
        else:
            allowed = torch.tensor([layout.eov_token_id if frame == num_frames - 1 else layout.eof_token_id])
        token = allowed[guided[allowed].argmax()]
        tokens.append(int(token))
        guided_logits.append(guided)
        conditional = torch.cat([conditional, token[None]])
        unconditional = torch.cat([unconditional, token[None]])
    return tokens, torch.stack(guided_logits)


class Recorder(LogitsProcessor):
    """Keeps a copy of the scores it sees (the guided logits, before any constraint; inside a frame only
    the vision head runs, so the text ids are already -inf)."""

    def __init__(self):
        self.seen = []

    def __call__(self, input_ids, scores):
        self.seen.append(scores.clone())
        return scores


def assert_frames_well_formed(ids, layout, num_frames):
    frames = ids.unflatten(-1, (num_frames, layout.frame_length))
    codes = frames[..., :-1]
    assert ((codes >= layout.first_code_id) & (codes < layout.eof_token_id)).all()
    assert (frames[..., :-1, -1] == layout.eof_token_id).all()
    assert (frames[..., -1, -1] == layout.eov_token_id).all()


def test_batched_guidance_equals_two_manual_passes(model, layout):
    ids, mask = left_pad(CONDITIONAL)  # rows of different lengths: left padding is exercised too
    num_frames, scale = 2, 3.0
    recorder = Recorder()
    structure = FrameStructureLogitsProcessor(layout, num_frames, ids.shape[1])
    steps = num_frames * layout.frame_length
    tokens = sample(
        model,
        ids,
        mask,
        schedule=[(steps, SamplingConfig(do_sample=False, guidance_scale=scale))],
        processors=[recorder, structure],
        unconditional_ids=UNCONDITIONAL,
    )
    seen = torch.stack(recorder.seen, dim=1)  # [batch, steps, width]
    vocab = model.config.vocab_size
    assert (seen[..., :vocab] == float("-inf")).all()
    for row, prompt in enumerate(CONDITIONAL):
        expected, expected_logits = reference_greedy(model, layout, prompt, UNCONDITIONAL, [scale] * steps, num_frames)
        assert tokens[row].tolist() == expected
        torch.testing.assert_close(seen[row][..., vocab:], expected_logits[..., vocab:], atol=1e-4, rtol=1e-4)
    assert_frames_well_formed(tokens, layout, num_frames)


def test_sampled_frames_are_well_formed_and_seeds_reproduce(model, layout):
    ids, mask = left_pad(CONDITIONAL)
    num_frames = 3
    hot = SamplingConfig(temperature=3.0, guidance_scale=2.0)  # flat distributions: every id is a candidate

    def draw(seed):
        return generate_video(
            model,
            ids,
            UNCONDITIONAL,
            attention_mask=mask,
            num_frames=num_frames,
            frame_shape=FRAME,
            first_frame_sampling=hot,
            sampling=hot,
            generator=torch.Generator().manual_seed(seed),
        )

    codes = draw(0)
    assert codes.shape == (2, num_frames, *FRAME)
    assert ((codes >= 0) & (codes < layout.num_codes)).all()
    assert torch.equal(draw(0), codes)
    assert not torch.equal(draw(1), codes)
    structure = FrameStructureLogitsProcessor(layout, num_frames, ids.shape[1])
    raw = sample(
        model,
        ids,
        mask,
        schedule=[(num_frames * layout.frame_length + 3, hot)],
        processors=[structure],
        unconditional_ids=UNCONDITIONAL,
        generator=torch.Generator().manual_seed(0),
    )
    assert_frames_well_formed(raw[:, : num_frames * layout.frame_length], layout, num_frames)
    assert (raw[:, num_frames * layout.frame_length :] < model.config.vocab_size).all()  # text after <eov>


def test_image_is_one_frame_and_greedy_matches_the_reference(model, layout):
    greedy = SamplingConfig(do_sample=False, guidance_scale=5.0)
    codes = generate_image(model, CONDITIONAL[0], UNCONDITIONAL, frame_shape=FRAME, sampling=greedy)
    assert codes.shape == (1, *FRAME)
    expected, _ = reference_greedy(model, layout, CONDITIONAL[0], UNCONDITIONAL, [5.0] * layout.frame_length, 1)
    assert codes.flatten().tolist() == [t - layout.first_code_id for t in expected[:-1]]
    assert expected[-1] == layout.eov_token_id


def test_lwm_video_procedure_appends_the_first_frame_to_both_rows(model, layout):
    video_prompt, image_prompt = CONDITIONAL
    num_frames = 3
    codes = generate_video(
        model,
        video_prompt,
        UNCONDITIONAL,
        image_prompt_ids=image_prompt,
        num_frames=num_frames,
        frame_shape=FRAME,
        first_frame_sampling=SamplingConfig(do_sample=False, guidance_scale=5.0),
        sampling=SamplingConfig(do_sample=False, guidance_scale=2.0),
    )
    steps = layout.frame_length
    first, _ = reference_greedy(model, layout, image_prompt, UNCONDITIONAL, [5.0] * steps, num_frames)
    assert first[-1] == layout.eof_token_id
    first_ids = torch.tensor(first)
    rest, _ = reference_greedy(
        model,
        layout,
        torch.cat([video_prompt, first_ids]),
        torch.cat([UNCONDITIONAL, first_ids]),
        [2.0] * (num_frames - 1) * steps,
        num_frames,
        block_done=steps,
    )
    expected = layout.frame_codes(torch.tensor(first + rest), FRAME)
    assert torch.equal(codes, expected)


def test_single_pass_video_switches_settings_on_one_cache(model, layout):
    num_frames = 3
    codes = generate_video(
        model,
        CONDITIONAL[0],
        UNCONDITIONAL,
        num_frames=num_frames,
        frame_shape=FRAME,
        first_frame_sampling=SamplingConfig(do_sample=False, guidance_scale=5.0),
        sampling=GREEDY,  # unguided: the unconditional rows leave the cache after the first frame
    )
    steps = layout.frame_length
    scales = [5.0] * steps + [1.0] * (num_frames - 1) * steps
    expected, _ = reference_greedy(model, layout, CONDITIONAL[0], UNCONDITIONAL, scales, num_frames)
    assert torch.equal(codes, layout.frame_codes(torch.tensor(expected), FRAME))


def test_a_grid_model_decodes_guided_video_and_continuations_as_recomputation(grid_model, layout):
    num_frames = 3
    codes = generate_video(
        grid_model, CONDITIONAL[0], UNCONDITIONAL, num_frames=num_frames, frame_shape=FRAME,
        first_frame_sampling=SamplingConfig(do_sample=False, guidance_scale=5.0), sampling=GREEDY,
    )
    scales = [5.0] * layout.frame_length + [1.0] * (num_frames - 1) * layout.frame_length
    expected, _ = reference_greedy(grid_model, layout, CONDITIONAL[0], UNCONDITIONAL, scales, num_frames)
    assert torch.equal(codes, layout.frame_codes(torch.tensor(expected), FRAME))
    given = torch.tensor([[[1, 2], [3, 4]]])
    new = continue_video(grid_model, CONDITIONAL[1], given, num_frames=2, sampling=GREEDY)
    context = torch.cat([CONDITIONAL[1], layout.frame_ids(given)])
    expected, _ = reference_greedy(grid_model, layout, context, UNCONDITIONAL, [1.0] * 2 * layout.frame_length, 2)
    assert torch.equal(new, layout.frame_codes(torch.tensor(expected), FRAME))
    # A prompt that ends inside a frame: the first generated code takes the place after the prompt's last.
    prompt = torch.cat([CONDITIONAL[0], torch.tensor([layout.first_code_id + 1])])
    steps = 2 * layout.frame_length - 1
    structure = FrameStructureLogitsProcessor(layout, 2, len(prompt) - 1)
    greedy = sample(grid_model, prompt, schedule=[(steps, GREEDY)], processors=[structure])
    expected, _ = reference_greedy(grid_model, layout, prompt, UNCONDITIONAL, [1.0] * steps, 2, block_done=1)
    assert greedy[0].tolist() == expected


def test_video_continuation_is_the_rollout_after_the_given_frames(model, layout):
    given = torch.tensor([[[1, 2], [3, 4]], [[5, 6], [7, 8]]])  # two frames
    new = continue_video(model, CONDITIONAL[1], given, num_frames=2, sampling=GREEDY)
    assert new.shape == (2, *FRAME)
    context = torch.cat([CONDITIONAL[1], layout.frame_ids(given)])
    expected, _ = reference_greedy(model, layout, context, UNCONDITIONAL, [1.0] * 2 * layout.frame_length, 2)
    assert torch.equal(new, layout.frame_codes(torch.tensor(expected), FRAME))
    batched = continue_video(model, CONDITIONAL[1], given.expand(3, -1, -1, -1), num_frames=2, sampling=GREEDY)
    assert batched.shape == (3, 2, *FRAME) and (batched == new).all()


def test_greedy_equals_argmax_and_degenerate_sampling_equals_greedy(model, layout):
    prompt = CONDITIONAL[0]
    steps = 2 * layout.frame_length
    structure = FrameStructureLogitsProcessor(layout, 2, len(prompt))
    greedy = sample(model, prompt, schedule=[(steps, GREEDY)], processors=[structure])
    expected, _ = reference_greedy(model, layout, prompt, UNCONDITIONAL, [1.0] * steps, 2)
    assert greedy[0].tolist() == expected
    for narrow in (SamplingConfig(top_k=1), SamplingConfig(top_p=1e-6), SamplingConfig(temperature=1e-4)):
        drawn = sample(
            model, prompt, schedule=[(steps, narrow)], processors=[structure], generator=torch.Generator().manual_seed(3)
        )
        assert torch.equal(drawn, greedy), narrow


def test_clear_errors(model):
    with pytest.raises(ValueError, match="needs unconditional_ids"):
        generate_image(model, CONDITIONAL[0], None, frame_shape=FRAME)
    with pytest.raises(ValueError, match="exceed the model's context of 4096"):
        generate_video(model, CONDITIONAL[0], UNCONDITIONAL, num_frames=1000, frame_shape=FRAME)
    with pytest.raises(ValueError, match="frame_shape must be"):
        generate_image(model, CONDITIONAL[0], UNCONDITIONAL, frame_shape=(0, 4))
    with pytest.raises(ValueError, match="codes must be"):
        continue_video(model, CONDITIONAL[0], torch.zeros(4, 4, dtype=torch.long), num_frames=1)
    with pytest.raises(ValueError, match="codes must lie in"):
        continue_video(model, CONDITIONAL[0], torch.full((1, 2, 2), 999), num_frames=1)
    with pytest.raises(ValueError, match="expected 1 or 2 prompt rows"):
        continue_video(model, torch.ones(3, 4, dtype=torch.long), torch.zeros(2, 1, 2, 2, dtype=torch.long), num_frames=1)
    with pytest.raises(ValueError, match="top_p must lie in"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        SamplingConfig(temperature=0.0)
    assert IMAGE_SAMPLING.guidance_scale == 5.0 and IMAGE_SAMPLING.top_k == 8192


class ByteTokenizer:
    """Text as UTF-8 bytes shifted past <unk>, <s>, </s>; as many ids as the tiny model's text vocabulary."""

    bos_token_id, eos_token_id = 1, 2

    def __len__(self):
        return 512

    def encode(self, text, add_special_tokens=False, split_special_tokens=True):
        return [3 + byte for byte in text.encode()]

    def decode(self, ids, skip_special_tokens=True):
        return bytes(i - 3 for i in ids if i >= 3).decode(errors="replace")


class CodeGrid(torch.nn.Module):
    """Stands in for the VQGAN: only its code layout matters to the prompts."""

    codebook_size = num_tokens = 256
    grid_size, codes_per_frame = 2, 4


def test_text_wrappers_build_lwm_prompts(model):
    processor = LWMProcessor(ByteTokenizer(), CodeGrid())
    first_frame = SamplingConfig(do_sample=False, guidance_scale=5.0)
    image = text_to_image(model, processor, "a red ball", sampling=first_frame)
    pair = text_to_image(model, processor, ["a red ball", "a cube"], sampling=first_frame)
    assert image.shape == (1, *FRAME) and torch.equal(pair[0], image)
    single = text_to_image(model, processor, "a cube", sampling=first_frame)
    assert torch.equal(pair[1], single)
    video = text_to_video(
        model, processor, "a red ball", num_frames=2, first_frame_sampling=first_frame, sampling=GREEDY
    )
    assert video.shape == (2, *FRAME) and torch.equal(video[0], image[0])  # LWM: frame 1 from the image prompt
    one_pass = text_to_video(
        model,
        processor,
        "a red ball",
        num_frames=2,
        procedure="single_pass",
        first_frame_sampling=first_frame,
        sampling=GREEDY,
    )
    expected = generate_video(
        model,
        processor.generation_prompt("a red ball", "video")["input_ids"],
        processor.unconditional_prompt()["input_ids"],
        num_frames=2,
        frame_shape=FRAME,
        first_frame_sampling=first_frame,
        sampling=GREEDY,
    )
    assert torch.equal(one_pass, expected)
    with pytest.raises(ValueError, match="does not match the model"):
        text_to_image(model, LWMProcessor(ByteTokenizer(), type("Big", (CodeGrid,), {"num_tokens": 8192})()), "x")
