import json

import pytest

from lwm.cli import main
from lwm.data.manifest import read_manifest


def test_lwm_data_world_writes_a_valid_manifest(tmp_path, capsys):
    assert main(["data", "world", str(tmp_path), "--clips", "2", "--no-progress"]) == 0
    manifest = tmp_path / "manifest.jsonl"
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert {r["task"] for r in records} >= {"video_caption", "video_qa", "text_to_video"}
    for record in records:
        for key in ("video", "image"):
            if key in record:
                assert (tmp_path / record[key]).is_file()
    assert len(read_manifest(manifest)) == len(records)


def test_lwm_data_world_rejects_zero_clips_without_needles(tmp_path, capsys):
    assert main(["data", "world", str(tmp_path), "--clips", "0"]) == 2
    assert "--clips must be at least 1" in capsys.readouterr().err


def test_lwm_data_world_writes_needles_alone_and_chosen_tasks(tmp_path, capsys):
    assert main(["data", "world", str(tmp_path / "needles"), "--clips", "0", "--needles", "2", "--no-progress"]) == 0
    assert [r.task for r in read_manifest(tmp_path / "needles" / "manifest.jsonl")] == ["needle", "needle"]
    assert main(["data", "world", str(tmp_path / "chat"), "--clips", "1", "--tasks", "video_conversation",
                 "--no-progress"]) == 0
    assert [r.task for r in read_manifest(tmp_path / "chat" / "manifest.jsonl")] == ["video_conversation"]
    assert main(["data", "world", str(tmp_path / "bad"), "--clips", "1", "--tasks", "dance"]) == 2
    assert "unknown tasks ['dance']" in capsys.readouterr().err


def test_lwm_data_world_writes_needles_and_refuses_bad_settings(tmp_path, capsys):
    assert main(["data", "world", str(tmp_path), "--clips", "1", "--needles", "3", "--needle-chars", "300", "600",
                 "--no-progress"]) == 0
    assert "3 needle records" in capsys.readouterr().out
    assert sum(r.task == "needle" for r in read_manifest(tmp_path / "manifest.jsonl")) == 3
    assert main(["data", "world", str(tmp_path), "--clips", "1", "--workers", "0"]) == 2
    assert "workers must be at least 1" in capsys.readouterr().err
    assert main(["data", "world", str(tmp_path), "--clips", "1", "--needles", "1", "--needle-chars", "500", "100"]) == 2
    assert "haystack" in capsys.readouterr().err
    assert main(["data", "world", str(tmp_path), "--clips", "1", "--needles", "1", "--needle-keys", "3", "2"]) == 2
    assert "needle keys" in capsys.readouterr().err
    assert main(["data", "world", str(tmp_path / "keys"), "--clips", "0", "--needles", "4", "--needle-keys", "4", "4",
                 "--no-progress"]) == 0
    for record in read_manifest(tmp_path / "keys" / "manifest.jsonl"):
        assert record.data["messages"][0]["content"][0]["text"].count("The special magic number for") == 4
    assert main(["data", "world", str(tmp_path), "--clips", "1", "--qa-types", "speed"]) == 2
    assert "unknown question types ['speed']" in capsys.readouterr().err


def test_lwm_data_world_help_names_every_task_and_the_defaults(capsys):
    from lwm.world import DEFAULT_TASKS, TASKS

    with pytest.raises(SystemExit):
        main(["data", "world", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(task in help_text for task in TASKS)
    assert f"default: the bundled model's {' '.join(DEFAULT_TASKS)};" in help_text
