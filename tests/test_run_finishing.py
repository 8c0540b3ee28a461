"""What a run leaves in its folder, through recipes/train.py: finished only when usable, no secret written,
the dataset rebuilt on request."""
import json
import os
import shutil

import pytest
import yaml
from test_recipe import recipe, tiny_flags


def test_results_are_written_last_and_resume_completes_a_half_finished_export(tmp_path, data_cache, monkeypatch):
    out = tmp_path / "run"
    flags = tiny_flags(data_cache, out, "--loss", "an", "--train-mode", "linear_fixed_features")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(recipe, "export_model", full_disk)
    with pytest.raises(OSError, match="No space"):
        recipe.main(flags)
    assert not (out / "results.json").exists()  # not finished: it has no model
    monkeypatch.undo()
    first = recipe.main(flags + ["--resume"])
    model_files = sorted(os.listdir(out / "model"))
    # killed after the last epoch's checkpoint, before the export finished: no results.json, no model/
    os.remove(out / "results.json")
    shutil.rmtree(out / "model")
    again = recipe.main(flags + ["--resume"])  # no epoch left to train: the best epoch exported, results written
    assert sorted(os.listdir(out / "model")) == model_files
    assert json.load(open(out / "results.json")) == again
    assert (again["best_epoch"], again["val_map"], again["test_map"]) == \
        (first["best_epoch"], first["val_map"], first["test_map"])
    assert [json.loads(line)["epoch"] for line in open(out / "metrics.jsonl")] == [1, 2]  # nothing retrained


def test_a_database_password_never_reaches_config_yaml(tmp_path, data_cache):
    out = tmp_path / "run"
    recipe.main(tiny_flags(data_cache, out, "--loss", "an", "--train-mode", "linear_fixed_features", "--epochs", "1",
                           "--search-storage", "postgresql://alice:s3cret@db.example/studies"))
    text = (out / "config.yaml").read_text()
    assert "s3cret" not in text
    assert yaml.safe_load(text)["search_storage"] == "postgresql://alice:***@db.example/studies"


def test_rebuild_dataset_builds_again(tmp_path, data_cache, capfd):
    flags = ["--loss", "an", "--train-mode", "linear_fixed_features", "--epochs", "1"]
    recipe.main(tiny_flags(data_cache, tmp_path / "a", *flags))
    capfd.readouterr()
    recipe.main(tiny_flags(data_cache, tmp_path / "b", *flags))
    assert "reusing the cached build" in capfd.readouterr().err
    recipe.main(tiny_flags(data_cache, tmp_path / "c", *flags, "--rebuild-dataset"))
    assert "reusing the cached build" not in capfd.readouterr().err
    assert yaml.safe_load((tmp_path / "c" / "config.yaml").read_text())["rebuild_dataset"] is True
