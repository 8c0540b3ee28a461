"""Hostile and careless input, round 2 (issue 22): searches, caches, divergence, torn logs, foreign weights.

Each test drives ``recipes/train.py`` (or ``recipes/evaluate.py``) the way a user runs it.
"""
import json
import os

import numpy as np
import pytest
from recipe_flags import save_features_dataset
import torch
from test_recipe import recipe, tiny_flags
from test_search import GRID, _config, _trained_points, _worker, features_data  # noqa: F401 (a fixture)

import spl_losses
from spl_losses import _registry
from spl_losses.losses.base import SPLoss


class _Diverging(SPLoss):
    """A loss whose gradient never vanishes: with a huge lr the logits overflow after a few epochs."""

    def compute(self, logits, targets, index=None):
        return -(logits.float() * (2 * targets.float() - 1)).mean()


@pytest.fixture(autouse=True, scope="module")
def _diverging_loss():
    """``test_diverging`` registered for this module's tests only (the registry's other tests see the package's)."""
    spl_losses.register_loss("test_diverging")(_Diverging)
    yield
    _registry._loss_entrypoints.pop("test_diverging", None)


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


def test_an_end_to_end_run_that_diverges_keeps_its_best_epoch(tmp_path, data_cache):
    out = tmp_path / "e2e"
    # a step schedule multiplying the lr by 1e30 every epoch: epoch 1 trains at 1e-3, epoch 2 at 1e27
    results = recipe.main(tiny_flags(data_cache, out, "--train-mode", "end_to_end", "--loss", "test_diverging",
                                     "--opt", "sgd", "--sched", "step", "--decay-epochs", "1", "--decay-rate", "1e30",
                                     "--epochs", "4"))
    saved = json.load(open(out / "results.json"))
    assert saved["best_epoch"] == 1 and saved["non_finite_epoch"] in (2, 3) and results["best_epoch"] == 1
    assert "--clip-grad" in saved["stopped_early"] and (out / "model" / "model.safetensors").is_file()


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


# ------------------------------------------------------------------------------- items 8 and 11: caches
def _digits(data_cache, out, cache_dir, *extra, num_validation=30, num_test=31):
    from recipe_flags import digits

    return [*digits(data_cache, num_train=64, num_validation=num_validation, num_test=num_test), "--model",
            "test_resnet", "--pretrained", "false", "--image-size", "16", "--batch-size", "16", "--lr", "1e-3",
            "--epochs", "1", "--no-progress", "--loss", "an", "--train-mode", "linear_fixed_features",
            "--cache-dir", str(cache_dir), "--output-dir", str(out), *extra]


def _cache_files(cache_dir):
    return sorted(p for p in cache_dir.iterdir() if p.suffix == ".safetensors")


def _split_of(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["split"]


def test_a_truncated_feature_cache_is_ignored_with_a_warning_and_rebuilt(tmp_path, data_cache):
    cache = tmp_path / "features"
    first = recipe.main(_digits(data_cache, tmp_path / "a", cache))
    files = _cache_files(cache)
    assert len(files) == 3
    data = files[0].read_bytes()
    values = _values(files[0])
    files[0].write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match=rf"ignoring feature cache {files[0]}: unreadable"):
        again = recipe.main(_digits(data_cache, tmp_path / "b", cache))
    assert again["test_map"] == first["test_map"] and torch.equal(_values(files[0]), values)  # rebuilt


def _values(path):
    from safetensors.torch import load_file

    return load_file(str(path))["features"].clone()


def _rewrite(path, change):
    """Rewrite a cache file with changed values and a checksum that matches them (only the value check is left)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from spl_losses.cache_files import tensor_sha256

    with safe_open(str(path), framework="pt") as f:
        meta, tensor = dict(f.metadata()), f.get_tensor("features")
    tensor = change(tensor.clone())
    meta["sha256"] = tensor_sha256(tensor)
    save_file({"features": tensor}, str(path), metadata=meta)


def test_feature_caches_with_nan_changed_values_or_swapped_between_splits_are_rebuilt(tmp_path, data_cache):
    cache = tmp_path / "features"
    flags = lambda out: _digits(data_cache, tmp_path / out, cache, num_validation=30, num_test=30)  # noqa: E731
    first = recipe.main(flags("a"))
    by_split = {_split_of(p): p for p in _cache_files(cache)}
    clean = {s: p.read_bytes() for s, p in by_split.items()}
    values = {s: _values(p) for s, p in by_split.items()}

    def nan(t):
        t[3, 1] = float("nan")
        return t

    _rewrite(by_split["validation"], nan)  # NaN with a matching checksum
    with pytest.warns(UserWarning, match=r"validation.*NaN or inf|NaN or inf"):
        assert recipe.main(flags("b"))["test_map"] == first["test_map"]
    assert torch.equal(_values(by_split["validation"]), values["validation"])
    raw = bytearray(by_split["train"].read_bytes())  # finite values changed in place: the checksum
    raw[-8:] = b"\x00\x00\x80\x3f\x00\x00\x80\x3f"
    by_split["train"].write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="checksum"):
        assert recipe.main(flags("c"))["test_map"] == first["test_map"]
    by_split["test"].write_bytes(clean["validation"])  # swapped between splits of the same size: the key
    with pytest.warns(UserWarning, match=r"made for other data.*dataset_fingerprint"):
        assert recipe.main(flags("d"))["test_map"] == first["test_map"]
    from safetensors.torch import save_file

    save_file({"features": torch.zeros(30, 7)}, str(by_split["test"]))  # another width, no metadata
    with pytest.warns(UserWarning, match="ignoring feature cache"):
        assert recipe.main(flags("e"))["test_map"] == first["test_map"]


def test_an_unwritable_feature_cache_folder_is_refused_before_extracting(tmp_path, data_cache, monkeypatch):
    from spl_losses.training import features as module

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")

    def extracted(*args, **kwargs):
        raise AssertionError("features were extracted before the cache folder was checked")

    monkeypatch.setattr(module, "predict_loader", extracted)
    with pytest.raises(ValueError, match=r"feature cache folder .*a_file/features cannot be written.*--cache-dir"):
        recipe.main(_digits(data_cache, tmp_path / "run", blocker / "features"))


def _teacher_data(tmp_path):
    return save_features_dataset(tmp_path / "teacher_feats")


def test_nan_teacher_scores_in_the_teacher_cache_are_ignored_and_recomputed(tmp_path, monkeypatch):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("SPL_LOSSES_CACHE", str(tmp_path / "cache"))
    data = _teacher_data(tmp_path)
    teacher_cache = tmp_path / "teacher_cache"
    flags = lambda out: ["--dataset", data, "--train-mode", "linear_fixed_features", "--epochs", "2",  # noqa: E731
                         "--batch-size", "8", "--lr", "0.1", "--no-progress", "--loss", "vlpl", "--teacher", "knn",
                         "--teacher-kwargs", "{num_neighbors: 5}", "--teacher-cache-dir", str(teacher_cache),
                         "--output-dir", str(tmp_path / out)]
    recipe.main(flags("a"))
    pseudo = load_file(str(tmp_path / "a" / "model" / "loss_state.safetensors"))["pseudo_labels"]
    (path,) = [p for p in teacher_cache.iterdir() if p.suffix == ".safetensors"]
    with safe_open(str(path), framework="pt") as f:
        meta, raw = dict(f.metadata()), f.get_tensor("raw")
    raw[:] = float("nan")
    meta.pop("sha256", None)  # as a file of before the checksum
    save_file({"raw": raw}, str(path), metadata=meta)
    with pytest.warns(UserWarning, match="NaN or inf"):
        recipe.main(flags("b"))
    again = load_file(str(tmp_path / "b" / "model" / "loss_state.safetensors"))["pseudo_labels"]
    assert torch.equal(again, pseudo)


def test_a_corrupted_image_cache_is_rebuilt_and_killed_builds_leave_no_temporary(tmp_path, data_cache):
    import socket
    import subprocess
    import sys

    images = tmp_path / "images"
    flags = lambda out: [*_digits(data_cache, tmp_path / out, tmp_path / "features", "--train-mode",  # noqa: E731
                                  "end_to_end"), "--image-cache", "--image-cache-dir", str(images)]
    first = recipe.main(flags("a"))
    files = sorted(images.glob("images-*.npy"))
    assert files
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = images / f"{files[0].name}.tmp-{socket.gethostname()}-{dead.pid}"
    stale.write_bytes(b"\0" * 1024)  # what a killed build leaves
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    alive = images / f"{files[0].name}.tmp-{socket.gethostname()}-{sleeper.pid}"  # a build still running
    alive.write_bytes(b"\0")
    foreign = images / f"{files[0].name}.tmp-another-host-{dead.pid}"
    foreign.write_bytes(b"\0")
    for path in files:  # every pixel changed, the file's time kept (silent corruption)
        stat = path.stat()
        array = np.load(str(path), mmap_mode="r+")
        array[:] = 255 - array
        array.flush()
        del array
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    try:
        with pytest.warns(UserWarning, match="pixels changed"):
            again = recipe.main(flags("b"))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert again["val_map"] == first["val_map"] and again["test_map"] == first["test_map"]
    assert not stale.exists() and foreign.exists() and alive.exists()


def test_a_points_owner_is_alive_by_its_process_here_and_by_its_heartbeat_elsewhere():
    import subprocess
    import sys
    import time

    from spl_losses.training import study

    here = study.worker_id()
    assert study._owner_alive(here, None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not study._owner_alive(here.rsplit(":", 1)[0] + f":{dead.pid}", time.time())  # gone, whatever its beat
    elsewhere = "another-machine:4026531836:12"
    assert study._owner_alive(elsewhere, time.time() - 5)
    assert not study._owner_alive(elsewhere, time.time() - study.HEARTBEAT_GRACE - 1)
    assert not study._owner_alive(elsewhere, None)
