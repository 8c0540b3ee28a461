"""Hostile and careless input, round 2 (issue 22): searches, caches, divergence, torn logs, foreign weights.

Each test drives ``recipes/train.py`` (or ``recipes/evaluate.py``) the way a user runs it.
"""
import json
import os

import numpy as np
import pytest
import torch
from test_recipe import recipe, tiny_flags
from test_search import GRID, _config, _trained_points, _worker, features_data  # noqa: F401 (a fixture)

import spl_losses
from spl_losses.losses.base import SPLoss


@spl_losses.register_loss("test_diverging")
class _Diverging(SPLoss):
    """A loss whose gradient never vanishes: with a huge lr the logits overflow after a few epochs."""

    def compute(self, logits, targets, index=None):
        return -(logits.float() * (2 * targets.float() - 1)).mean()


def _features_flags(features_data, out, *extra):
    return ["--dataset", features_data, "--train-mode", "linear_fixed_features", "--no-progress",
            "--output-dir", str(out), *extra]


# ------------------------------------------------------------------------- item 12: a loss that turns NaN
def test_a_run_that_diverges_after_good_epochs_exports_its_best_finite_epoch(tmp_path, features_data, capsys):
    out = tmp_path / "diverged"
    # sgd, one step per epoch, lr 1e37: the weights grow by ~1e37 per epoch and overflow after a few good epochs
    results = recipe.main(_features_flags(features_data, out, "--loss", "test_diverging", "--opt", "sgd",
                                          "--lr", "3e37", "--batch-size", "64", "--epochs", "30"))
    printed = capsys.readouterr().out
    metrics = [json.loads(line) for line in open(out / "metrics.jsonl")]
    bad = [m["epoch"] for m in metrics if m.get("non_finite")]
    assert len(bad) == 1 and bad[0] == metrics[-1]["epoch"] > 1 and bad[0] < 30  # stopped at the first bad epoch
    saved = json.load(open(out / "results.json"))
    assert saved["non_finite_epoch"] == bad[0] and "non-finite" in saved["stopped_early"]
    assert f"last good epoch is {bad[0] - 1}" in saved["stopped_early"]
    assert "--clip-grad" in saved["stopped_early"] and "--lr" in saved["stopped_early"]
    assert saved["best_epoch"] < bad[0] and np.isfinite(saved["test_map"]) and results["best_epoch"] == saved["best_epoch"]
    assert "--clip-grad" in printed and (out / "model" / "config.json").is_file()
    # --resume: the run is finished
    again = recipe.main(_features_flags(features_data, out, "--loss", "test_diverging", "--opt", "sgd",
                                        "--lr", "3e37", "--batch-size", "64", "--epochs", "30",
                                        "--resume"))
    assert again["best_epoch"] == saved["best_epoch"]


def test_a_run_that_diverges_at_its_first_epoch_says_so_with_hints(tmp_path, features_data):
    out = tmp_path / "diverged_at_once"
    with pytest.raises(ValueError, match=r"diverged at epoch 1 .*no earlier epoch had finite values.*--clip-grad"):
        recipe.main(_features_flags(features_data, out, "--loss", "test_diverging", "--opt", "sgd", "--lr", "3e38",
                                    "--batch-size", "8", "--epochs", "3"))
    assert not (out / "results.json").exists()


# ------------------------------------------------------------------ item 13: a torn last line of metrics.jsonl
def test_a_torn_last_metrics_line_does_not_block_resume(tmp_path, features_data):
    out = tmp_path / "torn"
    flags = _features_flags(features_data, out, "--loss", "an", "--lr", "0.1", "--batch-size", "16", "--epochs", "3")
    assert recipe.main([*flags, "--stop-after", "2"]) is None
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_loss": 0.5, "val_m')  # a kill in the middle of a write
    with pytest.warns(UserWarning, match=r"torn.*metrics\.jsonl|metrics\.jsonl.*torn"):
        results = recipe.main([*flags, "--resume"])
    assert [json.loads(line)["epoch"] for line in open(out / "metrics.jsonl")] == [1, 2, 3]
    assert results["epochs"] == 3


def test_read_jsonl_drops_a_torn_last_line_only(tmp_path):
    from spl_losses.training.run_dir import read_jsonl

    path = tmp_path / "m.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    with pytest.warns(UserWarning, match="torn"):
        assert read_jsonl(str(path)) == [{"epoch": 1}, {"epoch": 2}]
    path.write_text('{"epoch": 1}\n{"epo\n{"epoch": 3}\n')  # damage in the middle is not a torn write
    with pytest.raises(ValueError, match=str(path)):
        read_jsonl(str(path))


# ----------------------------------------------------------------- item 16: weights that do not fit config.json
def test_evaluate_with_weights_of_another_architecture_names_file_and_architecture(tmp_path, data_cache):
    import timm
    from safetensors.torch import save_file

    out = tmp_path / "run"
    recipe.main(tiny_flags(data_cache, out, "--loss", "an", "--train-mode", "linear_fixed_features", "--epochs", "1"))
    other = timm.create_model("test_vit", pretrained=False, num_classes=10)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(out / "model" / "model.safetensors"))
    from recipe_flags import load_recipe

    with pytest.raises(ValueError, match=r"model\.safetensors.*do not fit.*test_resnet"):
        load_recipe("evaluate").main(["--checkpoint", str(out)])


# ----------------------------------------------------------------------------------------- item 5: searches
def _study(out):
    import optuna

    return optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'search.db'}")


def test_a_diverging_search_point_fails_for_good_and_the_search_finishes(tmp_path, features_data):
    config = _config(tmp_path, features_data, epochs=2, grid={"lr": [0.1, 3e38]}, loss="test_diverging", opt="sgd",
                     batch_size=8)
    out = tmp_path / "diverging"
    for group_size in ("2", "1"):  # the two points in one linear loop, then one by one
        folder = out / group_size
        summary = recipe.main(["-c", config, "--search", "--output-dir", str(folder), "--search-group-size", group_size])
        assert [r["name"] for r in summary["runs"]] == ["lr-0.1"]
        assert [f["name"] for f in summary["failed"]] == ["lr-3e+38"]
        assert "diverged at epoch 1" in summary["failed"][0]["reason"]
        saved = json.load(open(folder / "search.json"))
        assert saved["winner"]["name"] == "lr-0.1" and "--clip-grad" in saved["failed"][0]["reason"]
        study = _study(folder)
        failed = [t for t in study.trials if t.state.name == "FAIL"]
        assert len(failed) == 1 and "diverged" in failed[0].user_attrs["failure"]
        # started again: nothing is trained, the failed point is never retried
        again = recipe.main(["-c", config, "--search", "--output-dir", str(folder), "--search-group-size", group_size])
        assert len(_study(folder).trials) == len(study.trials) and again["failed"] == saved["failed"]


def test_a_second_search_with_another_grid_in_the_same_folder_is_refused(tmp_path, features_data):
    out = tmp_path / "grids"
    first = _config(tmp_path, features_data, epochs=1, grid={"lr": [0.3, 0.1]})
    recipe.main(["-c", first, "--search", "--output-dir", str(out)])
    before = (out / "search.json").read_text()
    other = tmp_path / "other"
    other.mkdir()
    second = _config(other, features_data, epochs=1, grid={"lr": [0.03], "batch_size": [8]})
    with pytest.raises(ValueError, match=r"another grid needs another --output-dir"):
        recipe.main(["-c", second, "--search", "--output-dir", str(out)])
    assert (out / "search.json").read_text() == before
    assert len(_study(out).trials) == 2


def test_a_search_restarted_with_another_base_config_is_refused_naming_it(tmp_path, features_data):
    out = tmp_path / "base"
    config = _config(tmp_path, features_data, epochs=1, grid={"lr": [0.3, 0.1]})
    recipe.main(["-c", config, "--search", "--output-dir", str(out), "--stop-after", "1", "--search-group-size", "1"])
    with pytest.raises(ValueError, match=r"started with other settings \(loss: 'an' -> 'epr'\)"):
        recipe.main(["-c", config, "--search", "--output-dir", str(out), "--loss", "epr"])
    # the flags that do not change what a run computes may differ
    summary = recipe.main(["-c", config, "--search", "--output-dir", str(out), "--no-progress", "--keep-checkpoints", "1"])
    assert len(summary["runs"]) == 2


def test_workers_sharing_one_study_from_different_folders_train_each_point_once(tmp_path, features_data):
    config = _config(tmp_path, features_data, epochs=60, grid={"lr": [0.3, 0.1, 0.03, 0.01]})
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    workers = [_worker(config, tmp_path / f"worker{i}", "--search-storage", storage, "--search-group-size", "1")
               for i in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    trained = _trained_points(outputs)
    assert sorted(trained) == sorted(f"lr-{lr}" for lr in (0.3, 0.1, 0.03, 0.01)), outputs  # each point once
    assert all("UpdateFinishedTrialError" not in o for o in outputs)
