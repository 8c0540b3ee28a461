"""recipes/train.py with ``--estimator-optimizer``: LazyAdam in every train mode, resumed exactly, on 2 processes.

Tiny digits_mosaic runs (the helpers of tests/test_recipe.py): ROLE end to end with ``lazy_adam``
resumed after an interruption equals the uninterrupted run; its checkpoint holds LazyAdam's state as
plain tensors (accelerate reads it with ``torch.load(weights_only=True)``); its training loss follows the
dense-Adam run's to float tolerance; linear_init runs both phases with it; two processes (the estimator
left out of DDP, its rows exchanged) equal one; a row-sparse optimizer beside another ``--opt`` is refused
before any work.
"""
import json
import os

import pytest
import torch
from test_recipe import (launch_two_processes, read, recipe,  # noqa: F401
                         tiny_flags)

LAZY = ["--estimator-optimizer", "lazy_adam"]
END_TO_END = ["--train-mode", "end_to_end", "--loss", "role", "--epochs", "3"]


def log(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_end_to_end_lazy_adam_resumes_exactly_and_follows_dense_adam(tmp_path, data_cache):
    full = recipe.main(tiny_flags(data_cache, tmp_path / "full", *END_TO_END, *LAZY))
    assert recipe.main(tiny_flags(data_cache, tmp_path / "split", *END_TO_END, *LAZY, "--stop-after", "1")) is None
    checkpoint = next((tmp_path / "split" / "checkpoints").glob("epoch_001"))
    state = torch.load(checkpoint / "optimizer.bin", weights_only=True)
    network, estimator = state["optimizers"]
    assert {"exp_avg", "exp_avg_sq", "last_step", "lr_starts", "lr_values", "betas_eps"} <= set(estimator["state"][0])
    assert estimator["param_groups"][0]["lr"] == pytest.approx(1e-2)  # --lr 1e-3 x --lr-mult 10
    split = recipe.main(tiny_flags(data_cache, tmp_path / "split", *END_TO_END, *LAZY, "--resume"))
    for key in ("best_epoch", "val_map", "test_map", "test_map_skip_empty"):
        assert split[key] == full[key], key
    assert [m["train_loss"] for m in log(tmp_path / "split")] == [m["train_loss"] for m in log(tmp_path / "full")]
    dense = tmp_path / "dense"
    recipe.main(tiny_flags(data_cache, dense, *END_TO_END, "--estimator-optimizer", "adam"))
    assert [m["train_loss"] for m in log(tmp_path / "full")] == pytest.approx([m["train_loss"] for m in log(dense)],
                                                                                rel=1e-4)


def test_linear_init_with_lazy_adam_in_both_phases(tmp_path, data_cache):
    flags = ["--train-mode", "linear_init", "--loss", "label_estimation", "--linear-epochs", "2",
             "--linear-batch-size", "16", *LAZY]
    results = recipe.main(tiny_flags(data_cache, tmp_path / "run", *flags))
    assert results["epochs"] == 2 and 0.0 <= results["test_map"] <= 100.0
    for phase in (tmp_path / "run" / "linear_phase", tmp_path / "run"):
        state = torch.load(next((phase / "checkpoints").glob("epoch_*")) / "optimizer.bin", weights_only=True)
        assert "last_step" in state["optimizers"][1]["state"][0]


def test_two_processes_with_lazy_adam_match_one_process(tmp_path, data_cache):
    flags = ["--train-mode", "end_to_end", "--loss", "role", *LAZY]
    one = recipe.main(tiny_flags(data_cache, tmp_path / "one", *flags, model="test_efficientnet_gn"))
    launch_two_processes(tiny_flags(data_cache, tmp_path / "two", *flags, model="test_efficientnet_gn"))
    two = read(tmp_path / "two")
    assert two["num_processes"] == 2 and two["best_epoch"] == one["best_epoch"]
    for key in ("val_map", "test_map", "test_map_skip_empty"):
        assert two[key] == one[key], key
    assert [r["train_loss"] for r in log(tmp_path / "two")] == pytest.approx(
        [r["train_loss"] for r in log(tmp_path / "one")], rel=1e-5)


@pytest.mark.parametrize("extra", [["--opt", "momentum"], ["--weight-decay", "1e-4"]])
def test_row_sparse_estimator_beside_another_optimizer_is_refused_before_work(tmp_path, data_cache, extra):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="--estimator-optimizer lazy_adam is Adam without weight decay"):
        recipe.main(tiny_flags(data_cache, out, "--loss", "role", *LAZY, *extra))
    assert not (out / "metrics.jsonl").exists()
    recipe.main(tiny_flags(data_cache, tmp_path / "an", "--loss", "an", "--epochs", "1", *LAZY, *extra))  # no estimator
