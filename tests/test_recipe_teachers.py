"""The recipe's --teacher / --pseudo-label-* flags: pseudo-labels computed once, given to vlpl / gpr."""
import json

import datasets
import pytest
from recipe_flags import save_features_dataset
import torch
from test_recipe import recipe


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPL_LOSSES_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def features_data(tmp_path):
    return save_features_dataset(tmp_path / "feats")


def flags(data, out, *extra):
    return ["--dataset", data, "--train-mode", "linear_fixed_features", "--epochs", "2", "--batch-size", "8",
            "--lr", "0.1", "--no-progress", "--output-dir", str(out), *extra]


def test_knn_teacher_pseudo_labels_reach_the_loss_state(features_data, tmp_path, capsys):
    results = recipe.main(flags(features_data, tmp_path / "run", "--loss", "vlpl", "--teacher", "knn",
                                "--teacher-kwargs", "{num_neighbors: 5}", "--pseudo-label-rule", "threshold",
                                "--pseudo-label-kwargs", "{threshold: 0.5}"))
    assert 0 <= results["test_map"] <= 100
    assert "pseudo-labels from knn (threshold)" in capsys.readouterr().out
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "run" / "model" / "loss_state.safetensors"))
    pseudo = state["pseudo_labels"]
    assert pseudo.shape == (40, 3) and (pseudo > 0).any()
    observed = torch.zeros(40, 3)
    train = datasets.load_from_disk(features_data)["train"]
    observed[torch.arange(40), torch.tensor([r[0] for r in train["observed_labels"]])] = 1
    assert not (pseudo[observed > 0] != 0).any()  # observed entries carry no pseudo-label


def test_an_earlier_runs_model_is_a_teacher(features_data, tmp_path):
    recipe.main(flags(features_data, tmp_path / "round1", "--loss", "em"))
    results = recipe.main(flags(features_data, tmp_path / "round2", "--loss", "vlpl", "--teacher",
                                f"model:{tmp_path / 'round1'}", "--pseudo-label-rule", "prevalence"))
    assert 0 <= results["test_map"] <= 100
    config = json.load(open(tmp_path / "round2" / "results.json"))
    assert config["loss"] == "vlpl"


@pytest.mark.parametrize("extra,message", [
    (["--loss", "an", "--teacher", "knn"], "takes none"),
    (["--loss", "vlpl", "--teacher", "clip"], "expected clip:MODEL"),
    (["--loss", "vlpl", "--teacher", "knn", "--pseudo-label-kwargs", "{nope: 1}"], "pseudo-label rule"),
])
def test_teacher_settings_are_checked_before_work(features_data, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        recipe.main(flags(features_data, tmp_path / "bad", *extra))
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()
