import json
import warnings

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicCache

from lwm.model import LWMConfig, LWMForCausalLM, vision_grid_ids_of
from lwm.model.modeling_lwm import rotary_axes
from tests.helpers.tiny import tiny_lm


def multimodal_ids(config, batch=2, length=48, seed=0):
    """Text, then a vision run, then text again: both embedding tables and both heads are used."""
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(3, config.vocab_size, (batch, length), generator=generator)
    vision = config.vocab_size + torch.randint(0, config.num_vision_codes, (batch, length), generator=generator)
    ids = text.clone()
    ids[:, length // 4 : 3 * length // 4] = vision[:, length // 4 : 3 * length // 4]
    return ids


def grid_model(backend="sdpa", rope_3d=False):
    """A tiny model with a 4 x 4 code grid whose row and column vectors are not zero."""
    model = tiny_lm(backend, vision_grid_size=4, vision_rope_3d=rope_3d)
    with torch.no_grad():
        model.vision_grid.rows.normal_()
        model.vision_grid.columns.normal_()
    return model


def test_lwm_7b_has_exactly_the_videollama_parameter_count():
    with torch.device("meta"):
        model = LWMForCausalLM(LWMConfig.from_preset("lwm-7b"))
    assert sum(p.numel() for p in model.parameters()) == 6_807_621_632


def test_presets_and_validation():
    config = LWMConfig.from_preset("lwm-7b")
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (4096, 11008, 32)
    assert config.rope_parameters["rope_theta"] == 5e7 and not config.tie_word_embeddings
    assert (config.eof_token_id, config.eov_token_id) == (32000 + 8192, 32000 + 8193)
    with pytest.raises(ValueError, match="unknown model preset 'nope'"):
        LWMConfig.from_preset("nope")
    assert LWMConfig.from_preset("tiny", rope_theta=1e6).rope_parameters["rope_theta"] == 1e6


def test_logits_are_text_then_vision_and_tables_are_separate():
    model = tiny_lm("sdpa")
    config = model.config
    ids = multimodal_ids(config)
    logits = model(ids).logits
    assert logits.shape == (2, ids.shape[1], config.vocab_size + config.vision_vocab_size)
    with torch.no_grad():
        model.vision_head.weight.zero_()
    assert model(ids).logits[..., config.vocab_size :].abs().max() == 0
    with torch.no_grad():
        model.vision_embed_tokens.weight.add_(1.0)
    changed = model(ids).logits[..., : config.vocab_size]
    assert not torch.allclose(changed, logits[..., : config.vocab_size])


def test_out_of_range_ids_are_a_clear_error():
    model = tiny_lm("sdpa")
    with pytest.raises(ValueError, match="token ids must lie in"):
        model(torch.tensor([[model.config.total_vocab_size]]))


def test_loss_is_half_text_plus_half_vision_over_own_positions():
    model = tiny_lm("sdpa")
    config = model.config
    ids = multimodal_ids(config)
    out = model(ids, labels=ids)
    assert out.logits is None  # the loss runs each head on its own targets and builds no logits
    logits, targets = model(ids).logits[:, :-1].double(), ids[:, 1:]
    is_vision = targets >= config.vocab_size
    text_ce = torch.nn.functional.cross_entropy(logits[~is_vision][:, : config.vocab_size], targets[~is_vision])
    vision_ce = torch.nn.functional.cross_entropy(
        logits[is_vision][:, config.vocab_size :], targets[is_vision] - config.vocab_size
    )
    torch.testing.assert_close(out.loss.double(), 0.5 * (text_ce + vision_ce), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["blockwise", "eager"])
def test_backends_agree_with_sdpa(backend):
    ids = multimodal_ids(LWMConfig.from_preset("tiny"))
    reference, other = tiny_lm("sdpa"), tiny_lm(backend)
    segments = torch.tensor([[1] * 20 + [2] * 28, [1] * 48])
    for kwargs in ({}, {"segment_ids": segments}):
        torch.testing.assert_close(other(ids, **kwargs).logits, reference(ids, **kwargs).logits, atol=1e-5, rtol=0)
        want, got = reference(ids, labels=ids, **kwargs), other(ids, labels=ids, **kwargs)
        torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["sdpa", "blockwise"])
def test_packed_row_equals_documents_run_separately(backend):
    model = tiny_lm(backend)
    config = model.config
    first, second = multimodal_ids(config, 1, 20, seed=1), multimodal_ids(config, 1, 28, seed=2)
    packed = torch.cat([first, second], dim=1)
    segments = torch.tensor([[1] * 20 + [2] * 28])
    logits = model(packed, segment_ids=segments).logits
    torch.testing.assert_close(logits[:, :20], model(first).logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[:, 20:], model(second).logits, atol=1e-5, rtol=0)


def test_no_position_attends_across_a_document_boundary():
    model = tiny_lm("blockwise")
    ids = multimodal_ids(model.config, 1, 40)
    segments = torch.tensor([[1] * 15 + [2] * 25])
    base = model(ids, segment_ids=segments).logits
    changed = ids.clone()
    changed[0, :15] = torch.randint(3, model.config.vocab_size, (15,))
    after = model(changed, segment_ids=segments).logits
    torch.testing.assert_close(after[:, 15:], base[:, 15:], atol=1e-6, rtol=0)


def test_greedy_generate_with_cache_equals_recomputation():
    model = tiny_lm("blockwise")
    prompt = multimodal_ids(model.config, 2, 12)
    generated = model.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=True, pad_token_id=0)
    ids = prompt
    for _ in range(10):
        next_id = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    assert torch.equal(generated, ids)


@pytest.mark.parametrize("name", ["cache", "past_key_values"])  # the names after and before transformers 5.24
def test_a_cache_passed_under_either_name_continues_the_sequence(name):
    model = tiny_lm("sdpa")
    ids = multimodal_ids(model.config, 1, 9)
    cache = DynamicCache(config=model.config)
    model(ids[:, :8], use_cache=True, **{name: cache})
    step = model(ids[:, 8:], use_cache=True, **{name: cache}).logits[:, -1]
    assert cache.get_seq_length() == 9
    torch.testing.assert_close(step, model(ids).logits[:, -1], atol=1e-5, rtol=0)


def test_left_padded_generation_matches_unpadded():
    model = tiny_lm("sdpa")
    prompt = multimodal_ids(model.config, 1, 10)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 10, dtype=torch.long)], dim=1)
    alone = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    batched = model.generate(padded, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(alone[:, 10:], batched[:, 13:])


def test_vision_grid_ids_count_each_codes_place_in_its_frame():
    config = LWMConfig.from_preset("tiny")
    v, eof, eov = config.vocab_size, config.eof_token_id, config.eov_token_id
    ids = torch.tensor([
        [5, 6, v + 3, v + 3, v + 9, eof, v + 1, v + 2, eov, 0, v],
        [v, v + 1, eof, 7, 8, 9, 9, 9, 9, 9, 9],
    ])
    assert vision_grid_ids_of(ids, v, config.num_vision_codes).tolist() == [
        [-1, -1, 0, 1, 2, -1, 0, 1, -1, -1, 0],
        [0, 1, -1, -1, -1, -1, -1, -1, -1, -1, -1],
    ]


def test_the_grid_adds_each_codes_row_and_column_vector_and_leaves_text_alone():
    model = grid_model()
    v = model.config.vocab_size
    ids = torch.tensor([[5] + [v + 7] * 6 + [model.config.eof_token_id, v + 7]])
    hidden = model.embed(ids)[0]
    grid, code = model.vision_grid, model.vision_embed_tokens.weight[7]
    places = [None, 0, 1, 2, 3, 4, 5, None, 0]
    for position, place in enumerate(places):
        if place is not None:
            expected = code + grid.rows[place // 4] + grid.columns[place % 4]
            torch.testing.assert_close(hidden[position], expected, msg=f"place {place}")
    torch.testing.assert_close(hidden[0], model.model.embed_tokens.weight[5])
    torch.testing.assert_close(hidden[7], model.vision_embed_tokens.weight[model.config.num_vision_codes])


def test_a_grid_added_to_a_trained_model_changes_nothing_until_trained(tmp_path):
    model = tiny_lm("sdpa")
    model.save_pretrained(tmp_path)
    grown = LWMForCausalLM.from_pretrained(tmp_path, vision_grid_size=4, attn_implementation="sdpa").eval()
    ids = multimodal_ids(model.config)
    assert grown.config.vision_grid_size == 4
    assert torch.equal(grown(ids).logits, model(ids).logits)
    with torch.no_grad():
        grown.vision_grid.columns.normal_()
    changed = (grown(ids).logits - model(ids).logits).abs().amax(dim=(0, 2))
    first_code = ids.shape[1] // 4
    assert changed[:first_code].max() == 0 and changed[first_code:].min() > 0


@pytest.mark.parametrize("rope_3d", [False, True])
def test_decoding_a_grid_model_needs_the_grid_ids_and_then_equals_recomputation(rope_3d):
    model = grid_model(rope_3d=rope_3d)
    ids = multimodal_ids(model.config)
    full = model(ids).logits
    cache = DynamicCache(config=model.config)
    model(ids[:, :20], cache=cache, use_cache=True)
    with pytest.raises(ValueError, match="need vision_grid_ids"):
        model(ids[:, 20:21], cache=cache, use_cache=True)
    grid_ids = model.grid_ids_of(ids)
    for position in range(20, 40):  # codes up to 36, then text
        step = model(ids[:, position : position + 1], cache=cache, use_cache=True,
                     vision_grid_ids=grid_ids[:, position : position + 1]).logits
        torch.testing.assert_close(step[:, 0], full[:, position], atol=1e-5, rtol=0)


@pytest.mark.parametrize("rope_3d", [False, True])
def test_generate_feeds_a_grid_model_its_grid_ids(rope_3d):
    model = grid_model("blockwise", rope_3d)
    prompt = multimodal_ids(model.config, 2, 24)[:, :14]  # ends inside a run of codes
    generated = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
    ids = prompt
    for _ in range(8):
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, ids)


def test_save_and_load_round_trip_is_exact(tmp_path):
    model = tiny_lm("blockwise")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "lwm"
    loaded = LWMForCausalLM.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    auto = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(auto, LWMForCausalLM) and isinstance(AutoConfig.from_pretrained(tmp_path), LWMConfig)


def test_text_only_llama_checkpoint_loads_with_one_clear_warning(tmp_path):
    torch.manual_seed(0)
    llama_config = LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256,
    )
    llama = LlamaForCausalLM(llama_config).eval()
    llama.save_pretrained(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = LWMForCausalLM.from_pretrained(tmp_path, vision_vocab_size=40, num_vision_codes=32).eval()
    ours = [w for w in caught if "text-only LLaMA checkpoint" in str(w.message)]
    assert len(ours) == 1
    ids = torch.randint(0, 300, (2, 30))
    want = llama(ids).logits
    got = model(ids).logits[..., :300]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert model.vision_head.weight.shape == (40, 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash-attn needs CUDA")
def test_flash_attention_2_agrees_with_sdpa_on_gpu():
    pytest.importorskip("flash_attn")
    # transformers' flash path recognises packing from restarting position_ids in a batch of one row.
    ids = multimodal_ids(LWMConfig.from_preset("tiny"), batch=1).cuda()
    segments = torch.tensor([[1] * 20 + [2] * 28]).cuda()
    reference = tiny_lm("sdpa").cuda().to(torch.bfloat16)
    flash = tiny_lm("flash_attention_2").cuda().to(torch.bfloat16)
    for kwargs in ({}, {"segment_ids": segments}):
        want, got = reference(ids, **kwargs).logits.float(), flash(ids, **kwargs).logits.float()
        torch.testing.assert_close(got, want, atol=3e-2, rtol=0)


def test_rotary_axes_give_codes_their_row_and_column_and_text_its_position():
    # text at 0-1, a 2 x 2 frame at 2-5, <eof> at 6, the next frame at 7-10, text at 11
    grid_ids = torch.tensor([[-1, -1, 0, 1, 2, 3, -1, 0, 1, 2, 3, -1]])
    positions = torch.arange(12)[None]
    sequence, row, column = rotary_axes(positions, grid_ids, grid_size=2)
    assert sequence.tolist() == positions.tolist()
    assert row.tolist() == [[0, 1, 2, 2, 3, 3, 6, 7, 7, 8, 8, 11]]
    assert column.tolist() == [[0, 1, 2, 3, 2, 3, 6, 7, 8, 7, 8, 11]]


def test_rope_3d_leaves_text_as_1d_rope_and_turns_codes_by_their_place():
    flat, rotated = tiny_lm(vision_grid_size=4), tiny_lm(vision_grid_size=4, vision_rope_3d=True)
    rotated.load_state_dict(flat.state_dict())
    text = torch.randint(3, flat.config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(rotated(text).logits, flat(text).logits, rtol=0, atol=0)
    ids = multimodal_ids(flat.config)
    changed = (rotated(ids).logits - flat(ids).logits).abs().amax(dim=(0, 2))
    first_code = ids.shape[1] // 4
    assert changed[: first_code + 1].max() == 0  # a frame's first code is at row 0, column 0 of its frame
    assert changed[first_code + 2 :].min() > 0


def test_rope_3d_needs_the_grid():
    with pytest.raises(StrictDataclassClassValidationError, match="vision_rope_3d needs vision_grid_size"):
        LWMConfig.from_preset("tiny", vision_rope_3d=True)


def test_codes_can_start_from_the_tokenizers_code_vectors():
    model = tiny_lm()
    codes = model.config.num_vision_codes
    vectors = torch.randn(codes, 8, generator=torch.Generator().manual_seed(0))
    vectors[1] = vectors[0] + 0.01  # two codes that draw nearly alike
    untouched = model.vision_embed_tokens.weight[codes:].clone()
    model.init_codes_from(vectors)
    for table in (model.vision_embed_tokens.weight, model.vision_head.weight):
        rows = table[:codes]
        # an orthogonal map of the standardised vectors: their inner products, scaled, are kept
        standardised = (vectors - vectors.mean(0)) / vectors.std(0)
        gram = standardised @ standardised.T
        torch.testing.assert_close(rows @ rows.T / (rows @ rows.T).trace(), gram / gram.trace(), atol=1e-5, rtol=1e-4)
        assert rows.std().item() == pytest.approx(model.config.initializer_range, rel=1e-4)
        assert torch.nn.functional.cosine_similarity(rows[0], rows[1], dim=0) > 0.99
    assert torch.equal(model.vision_embed_tokens.weight[codes:], untouched)  # <eof>, <eov> and padding rows
    with pytest.raises(ValueError, match="expected at most 256 code vectors"):
        model.init_codes_from(torch.randn(300, 8))
    # a codebook followed by motion tokens: the codes start from their vectors, the motion tokens stay as they were
    motion_rows = model.vision_head.weight[10:codes].clone()
    model.init_codes_from(torch.randn(10, 8))
    assert torch.equal(model.vision_head.weight[10:codes], motion_rows)
    assert not torch.equal(model.vision_head.weight[:10], motion_rows[:10])
