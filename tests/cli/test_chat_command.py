"""`lwm chat --max-frames N`: the frames a video is read as are decided once, by the loaded model's
processor, and the command line overrides the model folder's value; a 32-frame clip is read whole when
the model's context holds it (as the bundled model's grown context does)."""

import io
import json
import shutil
import sys

import pytest

from lwm import media, world
from lwm.cli import main


@pytest.fixture(scope="module")
def four_frame_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with a processor that samples 4 frames of a video, as the bundled model's does."""
    folder = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("four-frames") / "model")
    config = folder / "processor_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "max_frames": 4}))
    return folder


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    media.save_video(world.generate_clip(0, n_frames=32).frames, path, lossless=True)
    return path


@pytest.mark.parametrize("flags, frames", [([], 4), (["--max-frames", "8"], 8), (["--max-frames", "32"], 32)])
def test_chat_feeds_the_frames_the_command_line_asks_for(four_frame_model, clip, flags, frames, monkeypatch, capsys):
    import lwm.api

    prompts = []

    def recording(model, prompt, *args, **kwargs):
        prompts.append(prompt)
        return iter_tokens(model, prompt, *args, **kwargs)

    iter_tokens = lwm.api.iter_tokens
    monkeypatch.setattr(lwm.api, "iter_tokens", recording)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code = main(["chat", "--model", str(four_frame_model), *flags, "-p", "What happens?", "--video", str(clip),
                 "--max-tokens", "1"])
    assert code == 0, capsys.readouterr().err
    (prompt,) = prompts
    config = json.loads((four_frame_model / "config.json").read_text())
    codes_per_frame = 16  # the tiny VQGAN: 8x8 pixels -> 4x4 codes
    vision_tokens = int((prompt >= config["vocab_size"]).sum())
    assert vision_tokens == frames * (codes_per_frame + 1)  # each frame: its codes and <eof> (<eov> for the last)
