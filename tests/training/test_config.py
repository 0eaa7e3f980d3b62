"""Training configs: YAML onto dataclasses, typed overrides, the learning-rate schedule, DeepSpeed settings."""

import dataclasses
import json
import math
import subprocess
from pathlib import Path

import pytest

from lwm import world
from lwm.eval.suite import FULL
from lwm.generation import DrawingConfig
from lwm.model import LWMConfig
from lwm.tokenizers.configuration_vqgan import VQGANConfig
from lwm.training.config import ConfigError, ScheduleConfig, load_config
from lwm.training.trainer import deepspeed_config, lr_multiplier


@pytest.fixture
def path(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("output_dir: out\ndata: {path: tokens}\nstages:\n  - {seq_len: 64, rope_theta: 1.0e6, steps: 10}\n")
    return path


def test_config_overrides_are_typed(path):
    config = load_config(path, ["optimizer.lr=1e-4", "stages.0.steps=20", "parallel.sp_size=2",
                                "model.trainable=[vision_head.*]"])
    assert (config.optimizer.lr, config.stages[0].steps, config.parallel.sp_size) == (1e-4, 20, 2)
    assert config.stages[0].rope_theta == 1e6
    assert config.model.trainable == ["vision_head.*"]


@pytest.mark.parametrize("override, message", [
    ("optimizer.learning_rate=1", "optimizer.learning_rate"),
    ("stages.0.steps=many", "stages.0.steps must be an integer"),
    ("stages.3.steps=1", "stages.3"),
    ("parallel.zero_stage=4", "parallel.zero_stage must be one of"),
    ("parallel.sp_size=3", r"stages.0.seq_len: .*use a multiple of 6 \(parallel.sp_size=3\)"),
    ("optimizer.lr", "key=value"),
    ("model.init_codes_from_vqgan=true", "model.init_codes_from_vqgan needs processor.vqgan"),
    ("stages.0.yarn={original_length: 64}", r"stages.0.yarn.original_length must lie in \(0, seq_len=64\)"),
    ("stages.0.yarn={original_length: 16, beta_fast: 1, beta_slow: 2}", "stages.0.yarn needs 0 < beta_slow <= beta_fast"),
    ("stages.0.yarn={original_length: 16, attention_factor: 0}", "stages.0.yarn.attention_factor must be positive"),
])
def test_bad_settings_are_named(path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(path, [override])


def test_a_yarn_stage_names_its_factor_from_the_lengths(path):
    yarn = load_config(path, ["stages.0.yarn={original_length: 16, beta_fast: 2, beta_slow: 1, attention_factor: 1}"])
    assert yarn.stages[0].rope_parameters() == {
        "rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 16,
        "beta_fast": 2.0, "beta_slow": 1.0, "attention_factor": 1.0}
    assert load_config(path).stages[0].rope_parameters() == {"rope_type": "default", "rope_theta": 1e6}


def test_shipped_configs_load_and_lwm_stages_follow_the_paper():
    text = load_config("configs/train/lwm-7b-text.yaml")
    assert [(s.seq_len, s.rope_theta) for s in text.stages] == [
        (2**15, 1e6), (2**17, 1e7), (2**18, 1e7), (2**19, 2.5e7), (2**20, 5e7)
    ]
    vision = load_config("configs/train/lwm-7b-vision.yaml")
    assert [s.seq_len for s in vision.stages] == [2**10, 2**13, 2**15, 2**17, 2**20]
    assert {s.rope_theta for s in vision.stages} == {5e7}
    assert len(load_config("configs/train/tiny-world.yaml").stages) == 2


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    multiplier = lr_multiplier(ScheduleConfig(warmup_steps=4, decay="cosine", min_lr_ratio=0.1), total_steps=14)
    assert [multiplier(step) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert multiplier(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert multiplier(14) == pytest.approx(0.1)
    constant = lr_multiplier(ScheduleConfig(warmup_steps=0, decay="constant"), total_steps=14)
    assert {constant(step) for step in range(14)} == {1.0}


def test_deepspeed_settings_come_from_the_config_and_extra_json_may_not_override_them(path, tmp_path):
    settings = deepspeed_config(load_config(path, ["parallel.zero_stage=3", "batch.grad_accum_steps=4", "precision=bf16"]))
    assert settings["zero_optimization"]["stage"] == 3 and settings["gradient_accumulation_steps"] == 4
    assert settings["bf16"] == {"enabled": True}
    assert settings["optimizer"]["params"]["torch_adam"] is True
    extra = tmp_path / "ds.json"
    extra.write_text(json.dumps({"zero_optimization": {"overlap_comm": True}}))
    settings = deepspeed_config(load_config(path, [f"parallel.deepspeed_config={extra}"]))
    assert settings["zero_optimization"] == {"overlap_comm": True, "stage": 0}
    extra.write_text(json.dumps({"gradient_accumulation_steps": 8}))
    with pytest.raises(ConfigError, match="gradient_accumulation_steps"):
        deepspeed_config(load_config(path, [f"parallel.deepspeed_config={extra}"]))


def test_the_bundled_recipe_exports_a_whole_model_folder():
    config = load_config("configs/train/bundled.yaml")
    assert (config.processor.tokenizer, config.processor.vqgan) == ("runs/bundled/text-tokenizer", "runs/bundled/vqgan")
    # every task `lwm data world` writes, needles included
    assert config.model.name_or_path == "world" and set(config.data.mixture) == set(world.DEFAULT_TASKS) | {"needle"}


def make_dry_run(target: str) -> str:
    """The commands `make TARGET` would run, all of them (`-B`), with `lwm` for the venv's path."""
    return subprocess.run(["make", "-n", "-B", target, "LWM=lwm"], capture_output=True, text=True, check=True).stdout


def rendered_tasks(recipe: str, folder: str) -> set[str]:
    """The --tasks of the recipe's `lwm data world FOLDER` command."""
    command = recipe.split(f"data world {folder} ")[1]
    return set(command.split("--tasks")[1].split("--workers")[0].replace("\\", " ").split())


def test_the_needle_curriculum_continues_the_bundled_recipe_on_the_makefiles_data():
    base = load_config("configs/train/bundled.yaml")
    config = load_config("configs/train/bundled-needles.yaml")
    assert config.model.name_or_path == f"{base.output_dir}/pretrained/stage0"
    assert config.processor == base.processor
    recipe = make_dry_run("bundled-data")
    short, long_, again = config.stages
    assert long_.data is None  # the top-level data: log-uniform haystacks beside the world's tasks replayed
    assert again.data == dataclasses.replace(config.data, seed=again.data.seed) and again.data.seed != config.data.seed
    assert short.data.mixture == {"needle": 1.0}
    assert set(config.data.mixture) == set(world.DEFAULT_TASKS) | {"needle"}
    for data in (short.data, config.data):
        assert f"--out {data.path} " in recipe
    assert long_.seq_len == again.seq_len == base.stages[0].seq_len



def test_the_conversation_step_continues_the_needle_curriculum():
    needles = load_config("configs/train/bundled-needles.yaml")
    config = load_config("configs/train/bundled-conversation.yaml")
    assert config.model.name_or_path == f"{needles.output_dir}/pretrained/stage{len(needles.stages) - 1}"
    assert config.processor == dataclasses.replace(needles.processor, single_turn=False)
    assert set(config.data.mixture) == set(world.DEFAULT_TASKS) | {"needle", "video_conversation"}
    assert [stage.seq_len for stage in config.stages] == [needles.stages[-1].seq_len]


def test_the_third_step_continues_the_needle_curriculum_on_every_world_task():
    needles = load_config("configs/train/bundled-needles.yaml")
    config = load_config("configs/train/bundled-continue.yaml")
    assert config.model.name_or_path == f"{needles.output_dir}/pretrained/stage{len(needles.stages) - 1}"
    assert config.processor == needles.processor
    assert "video_conversation" in config.data.mixture
    assert set(config.data.mixture) == set(world.TASKS) | {"needle"}
    assert [stage.seq_len for stage in config.stages] == [needles.stages[-1].seq_len]
    recipe = make_dry_run("bundled")
    assert f"--out {config.data.path} " in recipe
    assert rendered_tasks(recipe, "runs/bundled/continue") | {"needle"} == set(config.data.mixture)


def test_the_long_context_stages_grow_the_fourth_steps_decoder_on_the_makefiles_data():
    fourth = load_config("configs/train/bundled-qa.yaml")
    trained = fourth.stages[-1].seq_len
    yarn, theta = load_config("configs/train/bundled-long.yaml"), load_config("configs/train/bundled-long-theta.yaml")
    for config in (yarn, theta):
        assert config.model.name_or_path == f"{fourth.output_dir}/pretrained/stage0"
        assert config.processor == fourth.processor
        assert [stage.seq_len for stage in config.stages] == [4 * trained, 8 * trained]
        assert config.data.path == yarn.data.path and config.data.overlong == "drop"  # no 8x haystack cut short
    # YaRN stretches RoPE from the trained length, θ as trained; the θ recipe raises θ with every stage
    assert [stage.rope_parameters()["factor"] for stage in yarn.stages] == [4.0, 8.0]
    assert {stage.yarn.original_length for stage in yarn.stages} == {trained}
    assert {stage.rope_theta for stage in yarn.stages} == {fourth.stages[-1].rope_theta}
    thetas = [fourth.stages[-1].rope_theta] + [stage.rope_theta for stage in theta.stages]
    assert thetas == sorted(thetas) and len(set(thetas)) == 3
    recipe = make_dry_run("bundled-long")
    assert f"--out {yarn.data.path} " in recipe and f"--max-length {8 * trained}" in recipe
    assert "lwm train configs/train/bundled-long.yaml" in recipe
    assert rendered_tasks(recipe, "runs/bundled/long") | {"needle"} == set(yarn.data.mixture)


def test_the_fourth_step_trains_the_third_further_on_its_data_and_is_what_ships():
    third = load_config("configs/train/bundled-continue.yaml")
    config = load_config("configs/train/bundled-qa.yaml")
    assert config.model.name_or_path == f"{third.output_dir}/pretrained/stage{len(third.stages) - 1}"
    assert config.processor == third.processor
    assert config.data.path == third.data.path and config.data.seed != third.data.seed
    assert set(config.data.mixture) == set(third.data.mixture)
    assert max(config.data.mixture, key=config.data.mixture.get) == "video_qa"
    assert [stage.seq_len for stage in config.stages] == [third.stages[-1].seq_len]
    recipe = make_dry_run("bundled")
    trained = [line for line in recipe.splitlines() if line.startswith("lwm train ")]
    assert trained[-2:] == ["lwm train configs/train/bundled-qa.yaml",
                            "lwm train configs/train/bundled-qa.yaml --export-only --export-dir lwm/bundled"]


def test_the_code_grid_experiment_gives_the_fourth_step_a_grid():
    fourth = load_config("configs/train/bundled-qa.yaml")
    config = load_config("configs/train/bundled-grid.yaml")
    assert config.model.name_or_path == f"{fourth.output_dir}/pretrained/stage{len(fourth.stages) - 1}"
    assert config.model.vision_grid_size == VQGANConfig.from_preset("world").grid_size  # 16 x 16 codes a frame
    assert config.optimizer.lr_scale == {"vision_grid.*": 20}
    assert config.processor == fourth.processor
    assert config.data.path == fourth.data.path and config.data.seed not in (fourth.data.seed, 0)
    assert config.data.mixture == fourth.data.mixture


def test_the_motion_experiment_trains_the_fourth_step_on_the_data_its_header_writes():
    fourth = load_config("configs/train/bundled-qa.yaml")
    config = load_config("configs/train/bundled-motion.yaml")
    assert config.model.name_or_path == f"{fourth.output_dir}/pretrained/stage{len(fourth.stages) - 1}"
    assert config.processor == fourth.processor
    assert [stage.seq_len for stage in config.stages] == [fourth.stages[-1].seq_len]
    header = Path("configs/train/bundled-motion.yaml").read_text().replace("\\\n#", " ")
    world_command = header.split("lwm data world ")[1].splitlines()[0]
    assert "--qa-types direction bounce next_wall " in world_command
    written = world_command.split("--tasks")[1].split("--workers")[0].split()
    assert set(written) | {"needle"} == set(config.data.mixture)
    assert f"--out {config.data.path} " in header


def test_the_world_dynamics_recipe_trains_on_the_makefiles_data_and_exports_a_whole_model_folder():
    config = load_config("configs/train/world-dynamics.yaml")
    assert config.processor.tokenizer == "runs/world-dynamics/text-tokenizer"
    assert config.model.name_or_path == "world-dynamics" and config.model.init_codes_from_vqgan
    assert DrawingConfig.from_json(config.processor.drawing).video_frames == 4  # as the world's text -> video examples
    recipe = make_dry_run("world-dynamics")
    stills_stage, _world_stage, needles_stage, *world_and_needles = config.stages
    assert stills_stage.data.mixture == {"image_text": 1.0} and stills_stage.data.path == config.data.path
    for data in (config.data, needles_stage.data, *(stage.data for stage in world_and_needles)):
        assert f"--out {data.path} " in recipe
    # every task the decoder's world writes, needles in the last stage only, every video trained
    assert rendered_tasks(recipe, "runs/world-dynamics/world-decoder") == set(config.data.mixture) == set(world.TASKS)
    for stage in world_and_needles:
        assert set(stage.data.mixture) == set(world.TASKS) | {"needle"} and stage.data.train_prompt_vision
    assert config.data.train_prompt_vision
    assert needles_stage.data.mixture is None  # a dataset of needles alone
    decoder, vqgan = LWMConfig.from_preset("world-dynamics"), VQGANConfig.from_preset("world-local")
    assert {stage.seq_len for stage in config.stages} == {decoder.max_position_embeddings}
    # a vision id for each of the VQGAN's codes and motion tokens, every video trained with context noise
    assert decoder.num_vision_codes == vqgan.codebook_size + vqgan.num_motions and vqgan.num_motions
    # key frames tell the objects' looks again, but none falls among the frames `lwm eval` has a model draw
    # after its context (a continuation is drawn in the context's own vision block)
    assert vqgan.motion_key_interval >= FULL.context_frames + FULL.continuation_frames
    assert all(data.vision_noise > 0 for data in (config.data, *(stage.data for stage in world_and_needles)))
    assert DrawingConfig.from_json(config.processor.drawing).continuation_procedure == "in_block"
    trained = [line for line in recipe.splitlines() if line.startswith("lwm train ")]
    assert trained == ["lwm train configs/train/world-dynamics.yaml ",
                       "lwm train configs/train/world-dynamics.yaml --export-only --export-dir runs/world-dynamics/export"]
    # the data is tokenized with the VQGAN the export holds
    assert f"--vqgan {config.processor.vqgan} " in recipe


def assert_later_stages_raise_only_the_stills_share(config, recipe):
    """After the stills stage, `config` reads the recipe's data with stills (image_text) at a larger share
    of each mixture, every other task kept; the weights sum to 1 (to rounding), so a share is as stated."""
    for index in range(1, len(recipe.stages)):
        ours, theirs = config.stage_data(index), recipe.stage_data(index)
        assert dataclasses.replace(ours, mixture=None) == dataclasses.replace(theirs, mixture=None)
        if theirs.mixture:
            assert set(ours.mixture) == set(theirs.mixture)
            assert ours.mixture["image_text"] > theirs.mixture["image_text"]
            assert sum(ours.mixture.values()) == pytest.approx(1.0, abs=0.005)


def test_the_stills_twice_experiment_goes_on_from_the_recipes_stills_stage_with_only_the_mixtures_changed():
    recipe = load_config("configs/train/world-dynamics.yaml")
    config = load_config("configs/train/world-dynamics-stills-twice.yaml")
    assert config.model.name_or_path == f"{recipe.output_dir}/pretrained/stage0"
    assert config.processor == recipe.processor
    stills, *later = config.stages
    assert stills.data.mixture == recipe.stages[0].data.mixture and stills.data.seed != recipe.stages[0].data.seed
    assert [(stage.steps, stage.seq_len) for stage in later] == [(stage.steps, stage.seq_len) for stage in recipe.stages[1:]]
    assert_later_stages_raise_only_the_stills_share(config, recipe)


def test_the_two_session_recipe_runs_the_recipes_stages_longer_on_the_makefiles_data_and_resumes():
    recipe = load_config("configs/train/world-dynamics.yaml")
    config = load_config("configs/train/world-dynamics-long.yaml")
    assert (config.model, config.processor) == (recipe.model, recipe.processor)
    assert [(stage.name, stage.seq_len) for stage in config.stages] == [(stage.name, stage.seq_len) for stage in recipe.stages]
    assert all(ours.steps >= theirs.steps for ours, theirs in zip(config.stages, recipe.stages))
    commands = make_dry_run("world-dynamics-long")
    stills = config.stage_data(0)
    assert stills.mixture == {"image_text": 1.0} and f"--out {stills.path} " in commands
    assert rendered_tasks(commands, stills.path.replace("-tokens", "")) == {"image_text"}
    assert_later_stages_raise_only_the_stills_share(config, recipe)
    trained = [line for line in commands.splitlines() if line.startswith("lwm train ")]
    export = "--export-only --export-dir runs/world-dynamics-long/export"
    assert trained == ["lwm train configs/train/world-dynamics-long.yaml --resume auto ",
                       f"lwm train configs/train/world-dynamics-long.yaml {export}"]
