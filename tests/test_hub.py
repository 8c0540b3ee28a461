"""The Hub round trip against the local Hub-compatible server of tests/hub_server.py (see conftest.py).

Run directories are built here in the recipe's format (tiny timm model saved with ``save_for_hf``,
config.yaml, results.json, loss_state.safetensors), so these tests do not depend on training.
"""
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
from recipe_flags import digits as digits_flags
import torch
import yaml

import spl_losses
from spl_losses.hub import (
    HubPushError,
    LOSS_STATE_FILENAME,
    build_model_card,
    load_exported_model,
    load_loss_state,
    push_run_to_hub,
    save_loss_state,
    write_model_card,
)
from spl_losses.models.linear_probe import LinearProbe

LABEL_NAMES = ["cat", "dog", "bird", "car"]
NUM_EXAMPLES = 6
RESULTS = {
    "best_epoch": 2, "val_map": 61.25, "val_map_skip_empty": 70.5, "test_map": 55.125,
    "test_map_skip_empty": 58.0,
    "test_metrics": {"map": 55.125, "map_skip_empty": 58.0, "precision@1": 50.0, "recall@1": 25.0, "top1_hit": 50.0},
    "dataset": "voc2012", "loss": "role", "train_mode": "end_to_end", "label_names": LABEL_NAMES,
    "observed_seed": 1200,
}
CONFIG = {"dataset": "voc2012", "data_dir": None, "model": "test_resnet", "pretrained": False, "loss": "role",
          "train_mode": "end_to_end", "val_set_variant": "clean", "epochs": 3, "batch_size": 8, "lr": 1e-4,
          "lr_mult": 10.0, "opt": "adam", "image_size": 32, "mixed_precision": "no", "seed": 0,
          "expected_num_pos": 1.5}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _role_loss(seed: int = 0):
    return spl_losses.create_loss("role", num_classes=len(LABEL_NAMES), num_examples=NUM_EXAMPLES,
                                  expected_num_pos=1.5, seed=seed)


def make_timm_run(run_dir: Path, seed: int = 0):
    """A run directory in the recipe's format with a tiny timm model and a ROLE loss state."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", num_classes=len(LABEL_NAMES), pretrained=False).eval()
    timm.models.save_for_hf(model, run_dir / "model", model_config={"label_names": LABEL_NAMES},
                            safe_serialization=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    (run_dir / "results.json").write_text(json.dumps(RESULTS), encoding="utf-8")
    loss = _role_loss(seed)
    with torch.no_grad():
        loss.estimator.logits.copy_(torch.arange(NUM_EXAMPLES * len(LABEL_NAMES), dtype=torch.float32)
                                    .reshape(NUM_EXAMPLES, -1) / 10 - 1)
    loss.set_epoch(2)
    save_loss_state(loss, run_dir / "model")
    return model, loss


def make_probe_run(run_dir: Path):
    """A run directory whose model is a LinearProbe (a features dataset, no backbone)."""
    torch.manual_seed(1)
    probe = LinearProbe(8, len(LABEL_NAMES), label_names=LABEL_NAMES, backbone="resnet50.a1_in1k",
                        preprocessing={"input_size": [3, 448, 448], "mean": [0.485, 0.456, 0.406],
                                       "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"})
    probe.save_pretrained(run_dir / "model")
    config = dict(CONFIG, model="resnet50.a1_in1k", train_mode="linear_fixed_features", loss="an")
    results = dict(RESULTS, model="resnet50.a1_in1k", train_mode="linear_fixed_features", loss="an")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (run_dir / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return probe.eval()


def _unique(name: str) -> str:
    return f"org/{name}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------------------ model card
def test_model_card_parses_and_model_index_carries_map(tmp_path):
    from huggingface_hub import ModelCard

    make_timm_run(tmp_path)
    path = write_model_card(tmp_path, "org/voc-role")
    card = ModelCard.load(path)
    results = {(r.dataset_split, r.metric_type): r for r in card.data.eval_results}
    assert results[("validation", "map")].metric_value == 61.25
    assert results[("validation", "map_skip_empty")].metric_value == 70.5
    assert results[("test", "map")].metric_value == 55.125
    assert results[("test", "map_skip_empty")].metric_value == 58.0
    assert "AP 0" in results[("test", "map")].metric_name and "skipped" in results[("test", "map_skip_empty")].metric_name
    assert results[("test", "map")].dataset_type == "voc2012"
    assert results[("test", "map")].dataset_args == {"single_positive_seed": 1200}
    metadata = card.data.to_dict()
    assert metadata["model-index"][0]["name"] == "voc-role"
    assert metadata["library_name"] == "timm" and "spl_losses" in metadata["tags"]
    text = card.text
    assert 'timm.create_model("hf-hub:org/voc-role", pretrained=True)' in text
    assert "Multi-Label Learning from Single Positive Labels" in text  # Cole et al.
    assert "| Single-positive seed | 1200 |" in text and "| Best epoch (by validation mAP) | 2 |" in text
    assert "lr_mult: 10.0" in text  # hyperparameters
    assert LOSS_STATE_FILENAME in text


def test_model_card_cites_the_method_and_skips_missing_numbers():
    results = dict(RESULTS, loss="ll_r", val_map_skip_empty=float("nan"))
    del results["test_map_skip_empty"]
    card = build_model_card(dict(CONFIG, loss="ll_r"), results, "org/x", model_config={"architecture": "resnet50"})
    kinds = {(r.dataset_split, r.metric_type) for r in card.data.eval_results}
    assert kinds == {("validation", "map"), ("test", "map")}
    assert "Large Loss Matters" in card.text and "Single Positive Labels" in card.text


# ------------------------------------------------------------------------------------------ loss state
def test_loss_state_round_trip_restores_estimator_and_epoch(tmp_path):
    _, loss = make_timm_run(tmp_path)
    fresh = _role_loss(seed=5)
    assert not torch.equal(fresh.estimator.logits, loss.estimator.logits)
    load_loss_state(fresh, tmp_path)  # a run dir: finds model/loss_state.safetensors
    assert torch.equal(fresh.estimator.logits, loss.estimator.logits)
    assert fresh.epoch == 2


def test_loss_state_tensors_only_file_keeps_current_epoch(tmp_path):
    from safetensors.torch import save_file

    logits = torch.linspace(-2, 2, NUM_EXAMPLES * len(LABEL_NAMES)).reshape(NUM_EXAMPLES, -1)
    save_file({"estimator.logits": logits}, str(tmp_path / "plain.safetensors"))
    loss = _role_loss()
    loss.set_epoch(4)
    load_loss_state(loss, tmp_path / "plain.safetensors")
    assert torch.equal(loss.estimator.logits.detach(), logits) and loss.epoch == 4


def test_loss_state_errors(tmp_path):
    make_timm_run(tmp_path)
    wrong_size = spl_losses.create_loss("role", num_classes=len(LABEL_NAMES), num_examples=NUM_EXAMPLES + 1,
                                        expected_num_pos=1.5)
    with pytest.raises(ValueError, match="does not fit"):
        load_loss_state(wrong_size, tmp_path / "model" / LOSS_STATE_FILENAME)
    other = spl_losses.create_loss("epr", num_classes=len(LABEL_NAMES), expected_num_pos=1.5)
    with pytest.raises(ValueError, match="saved from loss 'role'"):
        load_loss_state(other, tmp_path)
    assert save_loss_state(other, tmp_path / "stateless") is None  # nothing worth keeping
    with pytest.raises(ValueError, match="not found"):
        load_loss_state(_role_loss(), tmp_path / "missing.safetensors")


# ------------------------------------------------------------------------------------------ push + load
def _load_train_recipe():
    from recipe_flags import load_recipe

    return load_recipe()


_LOAD_SCRIPT = textwrap.dedent("""
    import sys, torch, timm
    torch.set_num_threads(1)
    model = timm.create_model("hf-hub:" + sys.argv[1], pretrained=True).eval()
    assert "spl_losses" not in sys.modules
    with torch.no_grad():
        out = model(torch.load(sys.argv[2]))
    torch.save({"logits": out, "labels": model.pretrained_cfg["label_names"]}, sys.argv[3])
""")


def test_recipe_push_to_hub_then_fresh_process_load_online_and_offline(hub, tmp_path):
    """recipes/train.py --push-to-hub; a fresh process loads the model with plain timm (no spl_losses
    import) and reproduces the local export's outputs; then, with the server stopped, a fresh process with
    HF_HUB_OFFLINE=1 loads it from the cache."""
    import timm
    from accelerate.state import AcceleratorState
    from huggingface_hub import ModelCard

    repo_id = _unique("recipe-role")
    out = tmp_path / "run"
    data_flags = digits_flags(tmp_path / "data")
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        results = _load_train_recipe().main([
            *data_flags, "--model", "test_resnet", "--pretrained",
            "false", "--image-size", "16", "--batch-size", "16", "--lr", "1e-3", "--epochs", "1", "--no-progress",
            "--train-mode", "end_to_end", "--loss", "role", "--output-dir", str(out), "--push-to-hub", repo_id])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    files = hub.repo_files(repo_id)
    assert {"README.md", "config.json", "model.safetensors", LOSS_STATE_FILENAME, "training_config.yaml",
            "training_results.json"} <= set(files)
    assert yaml.safe_load(files["training_config.yaml"])["loss"] == "role"
    assert json.loads(files["training_results.json"])["test_map"] == pytest.approx(results["test_map"])
    assert not any(name.endswith((".bin", ".pth")) for name in files)  # safetensors only
    assert any(r.startswith("PUT /lfs-objects/") for r in hub.state.requests)  # the LFS basic transfer
    assert files["model.safetensors"] == (out / "model" / "model.safetensors").read_bytes()
    card = ModelCard(files["README.md"].decode())
    test_map = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}[("test", "map")]
    assert test_map == pytest.approx(results["test_map"], abs=1e-4)

    local = timm.create_model(f"local-dir:{out / 'model'}", pretrained=True).eval()
    torch.manual_seed(0)
    batch = torch.randn(2, 3, 16, 16)
    torch.save(batch, tmp_path / "batch.pt")
    with torch.no_grad():
        expected = local(batch)
    env = dict(os.environ, HF_HOME=str(tmp_path / "fresh_hf_home"), OMP_NUM_THREADS="1")
    args = [sys.executable, "-c", _LOAD_SCRIPT, repo_id, str(tmp_path / "batch.pt")]
    subprocess.run(args + [str(tmp_path / "online.pt")], env=env, check=True, cwd=tmp_path, timeout=300)
    online = torch.load(tmp_path / "online.pt")
    torch.testing.assert_close(online["logits"], expected)
    assert online["labels"] == [str(d) for d in range(10)]

    hub.stop()  # the Hub is gone: the cache must be enough
    try:
        subprocess.run(args + [str(tmp_path / "offline.pt")], env=dict(env, HF_HUB_OFFLINE="1"), check=True,
                       cwd=tmp_path, timeout=300)
    finally:
        hub.start()
    torch.testing.assert_close(torch.load(tmp_path / "offline.pt")["logits"], expected)


def test_recipe_continues_training_from_a_hub_checkpoint(hub, tmp_path):
    """``recipes/train.py --model hf-hub:ORG/NAME --pretrained true`` starts from the published weights
    (with a vanishing learning rate the exported parameters are the published ones)."""
    import timm
    from accelerate.state import AcceleratorState
    from safetensors.torch import load_file

    repo_id = _unique("continue")
    digits = [str(d) for d in range(10)]
    torch.manual_seed(3)
    model = timm.create_model("test_resnet", num_classes=10, pretrained=False)
    timm.models.save_for_hf(model, tmp_path / "pushed" / "model", model_config={"label_names": digits},
                            safe_serialization=True)
    (tmp_path / "pushed" / "config.yaml").write_text(yaml.safe_dump(dict(CONFIG, dataset="digits_mosaic")))
    (tmp_path / "pushed" / "results.json").write_text(json.dumps(dict(RESULTS, dataset="digits_mosaic",
                                                                      label_names=digits)))
    push_run_to_hub(tmp_path / "pushed", repo_id)
    data_flags = digits_flags(tmp_path / "data")
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        _load_train_recipe().main([
            *data_flags, "--model", f"hf-hub:{repo_id}",
            "--pretrained", "true", "--image-size", "16", "--batch-size", "16", "--lr", "1e-12", "--epochs", "1",
            "--no-progress", "--train-mode", "end_to_end", "--loss", "an", "--output-dir", str(tmp_path / "out")])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    published = load_file(tmp_path / "pushed" / "model" / "model.safetensors")
    continued = load_file(tmp_path / "out" / "model" / "model.safetensors")
    for name, _ in model.named_parameters():
        torch.testing.assert_close(continued[name], published[name], atol=1e-6, rtol=0)


def test_push_run_updates_own_repo_and_loads_loss_state(hub, tmp_path):
    repo_id = _unique("role")
    model, loss = make_timm_run(tmp_path / "run")
    push_run_to_hub(tmp_path / "run", repo_id)
    push_run_to_hub(tmp_path / "run", repo_id)  # its own repo: updating is allowed
    fresh = load_loss_state(_role_loss(seed=9), f"hf-hub:{repo_id}")
    assert torch.equal(fresh.estimator.logits, loss.estimator.logits) and fresh.epoch == 2
    loaded = load_exported_model(f"hf-hub:{repo_id}")
    batch = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), model(batch))


@pytest.mark.parametrize("boostlu_alpha", [None, 3.0])
def test_model_card_usage_snippet_runs_against_the_hub(hub, tmp_path, monkeypatch, boostlu_alpha):
    from PIL import Image

    from spl_losses.models import BoostLU

    repo_id = _unique("snippet")
    model, _ = make_timm_run(tmp_path / "run")
    if boostlu_alpha is not None:  # a BoostLU run: the stock timm model + boostlu_alpha in config.json
        config_path = tmp_path / "run" / "model" / "config.json"
        config_path.write_text(json.dumps(dict(json.loads(config_path.read_text()), boostlu_alpha=boostlu_alpha)))
    push_run_to_hub(tmp_path / "run", repo_id)
    card = hub.repo_files(repo_id)["README.md"].decode()
    start = card.index("```python", card.index("## Usage")) + len("```python")
    snippet = card[start:card.index("```", start)]
    Image.fromarray(np.full((30, 40, 3), 128, dtype=np.uint8)).save(tmp_path / "image.jpg")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(snippet, "model-card-usage", "exec"), namespace)
    assert namespace["label_names"] == LABEL_NAMES and namespace["probs"].shape == (len(LABEL_NAMES),)
    if boostlu_alpha is None:
        assert not isinstance(namespace["model"], BoostLU) and "BoostLU" not in card
    else:  # the snippet gives the boosted logits the card's mAP was measured with, and says plain timm does not
        assert isinstance(namespace["model"], BoostLU) and namespace["model"].alpha == boostlu_alpha
        assert "un-boosted" in card
        batch = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert not torch.allclose(BoostLU(model, alpha=boostlu_alpha)(batch), model(batch))
            torch.testing.assert_close(namespace["model"](batch), BoostLU(model, alpha=boostlu_alpha)(batch))
            torch.testing.assert_close(load_exported_model(f"hf-hub:{repo_id}", apply_boostlu=True)(batch),
                                       BoostLU(model, alpha=boostlu_alpha)(batch))
            torch.testing.assert_close(load_exported_model(f"hf-hub:{repo_id}")(batch), model(batch))


def test_push_and_load_linear_probe(hub, tmp_path):
    repo_id = _unique("probe")
    probe = make_probe_run(tmp_path / "run")
    push_run_to_hub(tmp_path / "run", repo_id)
    loaded = LinearProbe.from_pretrained(repo_id)
    assert loaded.label_names == LABEL_NAMES and loaded.backbone == "resnet50.a1_in1k"
    assert loaded.preprocessing["input_size"] == [3, 448, 448]
    features = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(features), probe(features))
    assert isinstance(load_exported_model(f"hf-hub:{repo_id}"), LinearProbe)
    card = hub.repo_files(repo_id)["README.md"].decode()
    assert "LinearProbe.from_pretrained" in card and "library_name: spl_losses" in card


def test_private_push_needs_a_token_to_read(hub, tmp_path):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError

    repo_id = _unique("private")
    make_probe_run(tmp_path)
    push_run_to_hub(tmp_path, repo_id, private=True)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, "config.json", token=False, cache_dir=tmp_path / "anonymous")
    assert json.loads(Path(hf_hub_download(repo_id, "config.json")).read_text())["label_names"] == LABEL_NAMES


def test_linear_probe_checks_and_preprocessing_from_timm(tmp_path):
    import timm

    from spl_losses.models import preprocessing_from_timm

    with pytest.raises(ValueError, match="label_names has 2 names"):
        LinearProbe(4, 3, label_names=["a", "b"])
    with pytest.raises(ValueError, match="in_features"):
        LinearProbe(0, 3)
    probe = LinearProbe(4, 2)
    with pytest.raises(ValueError, match=r"shape \(batch, 4\)"):
        probe(torch.zeros(2, 5))
    with torch.no_grad():
        probe.fc.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0]]))
        probe.fc.bias.copy_(torch.tensor([0.5, -1.0]))
        torch.testing.assert_close(probe(torch.tensor([[1.0, 1.0, 3.0, 3.0]])), torch.tensor([[1.5, 1.0]]))
    backbone = timm.create_model("test_resnet", pretrained=False)
    pre = preprocessing_from_timm(backbone)
    assert pre["input_size"] == list(backbone.pretrained_cfg["input_size"])
    assert pre["mean"] == list(backbone.pretrained_cfg["mean"]) and pre["std"] == list(backbone.pretrained_cfg["std"])
    LinearProbe(4, 2, backbone="test_resnet", preprocessing=pre).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["preprocessing"] == pre


def test_load_exported_model_from_local_run_dir(tmp_path):
    model, _ = make_timm_run(tmp_path)
    batch = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_exported_model(tmp_path)(batch), model(batch))
        torch.testing.assert_close(load_exported_model(f"local-dir:{tmp_path / 'model'}")(batch), model(batch))
    with pytest.raises(ValueError, match="no exported model"):
        load_exported_model(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------ datasets
def test_dataset_push_and_load_keeps_class_names(hub):
    import datasets
    from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

    features = Features({"features": List(Value("float32")), "labels": List(ClassLabel(names=LABEL_NAMES)),
                         "observed_labels": List(ClassLabel(names=LABEL_NAMES)), "index": Value("int64")})

    def split(n):
        return Dataset.from_dict({"features": [[float(i), 0.5] for i in range(n)],
                                  "labels": [[i % 4, (i + 1) % 4] for i in range(n)],
                                  "observed_labels": [[i % 4] for i in range(n)], "index": list(range(n))},
                                 features=features)

    repo_id = _unique("dataset")
    DatasetDict(train=split(5), validation=split(2), test=split(3)).push_to_hub(repo_id)
    loaded = datasets.load_dataset(repo_id)
    assert set(loaded) == {"train", "validation", "test"}
    assert loaded["train"].features["labels"].feature.names == LABEL_NAMES
    assert loaded["test"].features["observed_labels"].feature.names == LABEL_NAMES
    assert loaded["train"][3] == {"features": [3.0, 0.5], "labels": [3, 0], "observed_labels": [3], "index": 3}


def test_built_image_dataset_push_and_load_spml_dataset(hub, tmp_path):
    """A dataset of the data builders (images, observed single positives) goes up and comes back through
    ``load_spml_dataset`` with a Hub id; images, class names and the drawn positives survive."""
    from spl_losses.data import build_dataset, load_spml_dataset

    built = build_dataset("digits_mosaic", cache_dir=str(tmp_path / "cache"), num_train=6, num_validation=3,
                          num_test=3, image_size=16)
    repo_id = _unique("digits")
    built.push_to_hub(repo_id)
    loaded = load_spml_dataset(repo_id)
    for split in ("train", "validation", "test"):
        assert loaded[split].features["labels"].feature.names == built[split].features["labels"].feature.names
        assert loaded[split]["observed_labels"] == built[split]["observed_labels"]
        assert loaded[split]["labels"] == built[split]["labels"]
    assert loaded["train"][0]["image"].size == built["train"][0]["image"].size == (16, 16)
    assert np.array_equal(np.asarray(loaded["train"][1]["image"]), np.asarray(built["train"][1]["image"]))


def test_dataset_cli_push_to_hub_then_load_dataset(hub, tmp_path, capsys):
    """``python -m spl_losses.data build ... --push-to-hub`` against the server: data and the SPML card go
    up; ``datasets.load_dataset`` brings the splits back with their class names."""
    import datasets
    from huggingface_hub import DatasetCard

    from spl_losses.data.__main__ import main as data_cli

    repo_id = _unique("digits-cli")
    assert data_cli(["build", "digits_mosaic", "--push-to-hub", repo_id, "--cache-dir", str(tmp_path / "c"),
                     "--option", "num_train=6", "--option", "num_validation=3", "--option", "num_test=3"]) == 0
    card = DatasetCard(hub.repo_files(repo_id, repo_type="dataset")["README.md"].decode())
    assert "dataset_info" in card.data.to_dict()  # datasets' metadata merged into the SPML card
    loaded = datasets.load_dataset(repo_id)
    assert {split: len(ds) for split, ds in loaded.items()} == {"train": 6, "validation": 3, "test": 3}
    assert loaded["train"].features["labels"].feature.names == [str(d) for d in range(10)]
    assert all(len(row) == 1 for row in loaded["train"]["observed_labels"])


# ------------------------------------------------------------------------------------------ failures
_WRITTEN_BY_PUSH = ("README.md", "training_config.yaml", "training_results.json")


def _export_fingerprint(run_dir: Path):
    """Hashes of the exported files (those the push itself writes left out), checking those exist after a push."""
    files = {p.name: _sha256(p) for p in sorted((run_dir / "model").iterdir()) if p.name not in _WRITTEN_BY_PUSH}
    assert {"config.json", "model.safetensors"} <= set(files)
    return files


def _export_complete(run_dir: Path) -> bool:
    return all((run_dir / "model" / name).is_file() for name in _WRITTEN_BY_PUSH)


def test_push_without_token_fails_clearly_and_keeps_export(tmp_path, monkeypatch):
    make_timm_run(tmp_path)
    before = _export_fingerprint(tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(HubPushError, match="no Hugging Face token") as info:
        push_run_to_hub(tmp_path, "org/no-token")
    assert str(tmp_path / "model") in str(info.value)
    assert _export_fingerprint(tmp_path) == before and _export_complete(tmp_path)


def test_push_with_server_down_fails_clearly_and_keeps_export(tmp_path):
    from hub_server import HubServer

    server = HubServer().start()
    down_url = server.url
    server.close()
    make_timm_run(tmp_path)
    before = _export_fingerprint(tmp_path)
    with pytest.raises(HubPushError, match="could not reach the Hub") as info:
        push_run_to_hub(tmp_path, "org/down", endpoint=down_url)
    assert down_url in str(info.value)
    assert _export_fingerprint(tmp_path) == before and _export_complete(tmp_path)


def test_push_with_rejected_token_fails_clearly(hub, tmp_path):
    make_timm_run(tmp_path)
    with pytest.raises(HubPushError, match="rejected the token"):
        push_run_to_hub(tmp_path, _unique("bad-token"), token="invalid")


def test_push_to_repo_with_other_content_refuses_unless_overwrite(hub, tmp_path):
    repo_id = _unique("taken")
    other = {"README.md": b"---\ntags:\n- something-else\n---\nAnother model.\n", "weights.bin": b"\x00" * 8}
    hub.add_repo(repo_id, other)
    make_timm_run(tmp_path)
    before = _export_fingerprint(tmp_path)
    with pytest.raises(HubPushError, match="already exists and holds other content"):
        push_run_to_hub(tmp_path, repo_id)
    assert hub.repo_files(repo_id)["README.md"] == other["README.md"]  # untouched
    assert _export_fingerprint(tmp_path) == before and _export_complete(tmp_path)
    push_run_to_hub(tmp_path, repo_id, overwrite=True)
    assert "model.safetensors" in hub.repo_files(repo_id)


def test_push_rejects_incomplete_run_dir_and_bad_repo_id(tmp_path):
    with pytest.raises(ValueError, match="incomplete"):
        push_run_to_hub(tmp_path, "org/name")
    make_timm_run(tmp_path)
    with pytest.raises(ValueError, match="ORG/NAME"):
        push_run_to_hub(tmp_path, "no-namespace")


# ------------------------------------------------------------------------------------------ the server
def test_server_records_unknown_routes(hub_server):
    from huggingface_hub import get_session

    response = get_session().get(f"{hub_server.url}/api/some-future-route")
    assert response.status_code == 501 and "not implemented" in response.json()["error"]
    assert hub_server.unknown_routes == ["GET /api/some-future-route"]
    hub_server.unknown_routes.clear()


# ------------------------------------------------------------------------------------------ the real Hub
@pytest.mark.skipif(not (os.environ.get("HF_TOKEN_REAL") and os.environ.get("SPL_LOSSES_REAL_HUB") == "1"),
                    reason="opt-in: set HF_TOKEN_REAL (a write token) and SPL_LOSSES_REAL_HUB=1")
def test_real_hub_round_trip(tmp_path):
    """Push a tiny run to a private repo of the token's user on huggingface.co, load it, delete the repo.

    Runs in a subprocess: this process's huggingface_hub is bound to the local test server.
    """
    make_timm_run(tmp_path / "run")
    script = textwrap.dedent(f"""
        import uuid, torch, timm
        from huggingface_hub import HfApi
        from spl_losses.hub import push_run_to_hub
        api = HfApi()
        repo_id = api.whoami()["name"] + "/spl-losses-test-" + uuid.uuid4().hex[:8]
        try:
            push_run_to_hub({str(tmp_path / 'run')!r}, repo_id, private=True)
            model = timm.create_model("hf-hub:" + repo_id, pretrained=True)
            assert model.pretrained_cfg["label_names"] == {LABEL_NAMES!r}
        finally:
            api.delete_repo(repo_id, missing_ok=True)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_TOKEN=os.environ["HF_TOKEN_REAL"], HF_HOME=str(tmp_path / "hf_home"))
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=600)


# ------------------------------------------------------------------------------------------ continuing a run
def _digits_run_with_role_state(run_dir: Path, num_examples: int):
    """A published-run folder for digits_mosaic (10 classes): a tiny timm model and a ROLE state of known
    estimator logits (a ramp) for ``num_examples`` training rows."""
    import timm

    digits = [str(d) for d in range(10)]
    torch.manual_seed(4)
    timm.models.save_for_hf(timm.create_model("test_resnet", num_classes=10), run_dir / "model",
                            model_config={"label_names": digits}, safe_serialization=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(dict(CONFIG, dataset="digits_mosaic")))
    (run_dir / "results.json").write_text(json.dumps(dict(RESULTS, dataset="digits_mosaic", label_names=digits)))
    loss = spl_losses.create_loss("role", num_classes=10, num_examples=num_examples, expected_num_pos=3.439)
    ramp = torch.linspace(-3, 3, num_examples * 10).reshape(num_examples, 10)
    with torch.no_grad():
        loss.estimator.logits.copy_(ramp)
    save_loss_state(loss, run_dir / "model")
    return ramp


def _continue(tmp_path, out: Path, model: str, *extra):
    from accelerate.state import AcceleratorState

    data_flags = digits_flags(tmp_path / "data")
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        return _load_train_recipe().main([
            *data_flags, "--model", model, "--pretrained", "true",
            "--image-size", "16", "--batch-size", "16", "--lr", "1e-12", "--epochs", "1", "--no-progress",
            "--train-mode", "end_to_end", "--loss", "role", "--output-dir", str(out), *extra])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_recipe_continues_with_the_published_loss_state(hub, tmp_path, capsys):
    """--model hf-hub:... loads the published ROLE estimator by default ('auto'; with a vanishing lr the
    exported state is the published one); --init-loss-state none starts fresh; an explicit state of
    another (N, C) is a ValueError naming both shapes, raised before training."""
    from safetensors.torch import load_file

    repo_id = _unique("continue-role")
    ramp = _digits_run_with_role_state(tmp_path / "pushed", num_examples=32)
    push_run_to_hub(tmp_path / "pushed", repo_id)
    _continue(tmp_path, tmp_path / "auto", f"hf-hub:{repo_id}")
    assert f"loss state: loaded from hf-hub:{repo_id}" in capsys.readouterr().out
    continued = load_file(tmp_path / "auto" / "model" / LOSS_STATE_FILENAME)["estimator.logits"]
    torch.testing.assert_close(continued, ramp, atol=1e-6, rtol=0)

    _continue(tmp_path, tmp_path / "fresh", f"hf-hub:{repo_id}", "--init-loss-state", "none")
    assert "loss state: fresh" in capsys.readouterr().out
    fresh = load_file(tmp_path / "fresh" / "model" / LOSS_STATE_FILENAME)["estimator.logits"]
    assert (fresh - ramp).abs().max() > 0.5

    _digits_run_with_role_state(tmp_path / "other", num_examples=31)
    with pytest.raises(ValueError, match=r"--init-loss-state .*saved \(31, 10\), expected \(32, 10\)"):
        _continue(tmp_path, tmp_path / "mismatch", f"hf-hub:{repo_id}", "--init-loss-state", str(tmp_path / "other"))
    assert not (tmp_path / "mismatch" / "metrics.jsonl").exists()
