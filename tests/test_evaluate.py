"""recipes/evaluate.py: scores exported checkpoints on tiny datasets built here; expected metrics are
computed independently (model outputs scored with sklearn directly)."""
import json
from pathlib import Path

import numpy as np
import pytest
from recipe_flags import digits as digits_flags, load_recipe
import torch
import yaml
from sklearn.metrics import average_precision_score

from spl_losses.hub import push_run_to_hub
from spl_losses.models.linear_probe import LinearProbe

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["a", "b", "c"]
# class "c" has no positive in the test split: AP 0 in one convention, skipped in the other
TEST_LABELS = [[0], [1], [0, 1], [1], [0]]


evaluate_recipe = load_recipe("evaluate")


def _expected_maps(logits: np.ndarray, labels):
    dense = np.zeros(logits.shape, dtype=int)
    for row, classes in enumerate(labels):
        dense[row, classes] = 1
    aps = [average_precision_score(dense[:, c], logits[:, c]) for c in range(dense.shape[1]) if dense[:, c].any()]
    return 100 * sum(aps) / dense.shape[1], 100 * sum(aps) / len(aps)


def _features_dataset(path: Path, features: np.ndarray):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

    feats = Features({"features": List(Value("float32")), "labels": List(ClassLabel(names=NAMES)),
                      "observed_labels": List(ClassLabel(names=NAMES)), "index": Value("int64")})
    rows = {"features": features.tolist(), "labels": TEST_LABELS, "observed_labels": [r[:1] for r in TEST_LABELS],
            "index": list(range(len(TEST_LABELS)))}
    split = Dataset.from_dict(rows, features=feats)
    DatasetDict(train=split, validation=split, test=split).save_to_disk(str(path))


def _probe_run(run_dir: Path, seed: int = 0) -> LinearProbe:
    torch.manual_seed(seed)
    probe = LinearProbe(4, len(NAMES), label_names=NAMES, backbone="resnet50")
    probe.save_pretrained(run_dir / "model")
    config = {"dataset": "tiny", "model": "resnet50", "loss": "an", "train_mode": "linear_fixed_features"}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    results = dict(config, val_map=50.0, val_map_skip_empty=60.0, test_map=40.0, test_map_skip_empty=45.0,
                   label_names=NAMES, observed_seed=1200)
    (run_dir / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return probe.eval()


def test_evaluate_linear_probe_on_features(tmp_path):
    features = np.random.default_rng(0).normal(size=(len(TEST_LABELS), 4)).astype(np.float32)
    _features_dataset(tmp_path / "data", features)
    probe = _probe_run(tmp_path / "run")
    with torch.no_grad():
        logits = probe(torch.from_numpy(features)).numpy()
    expected_zero, expected_skip = _expected_maps(logits, TEST_LABELS)
    result = evaluate_recipe.main(["--checkpoint", str(tmp_path / "run"), "--dataset", str(tmp_path / "data"),
                                   "--batch-size", "2", "--output-json", str(tmp_path / "out.json")])
    metrics = result["metrics"]
    assert result["num_examples"] == len(TEST_LABELS)
    assert metrics["map"] == pytest.approx(expected_zero) and metrics["map_skip_empty"] == pytest.approx(expected_skip)
    assert metrics["map"] < metrics["map_skip_empty"]  # class "c" has no positive
    assert json.loads((tmp_path / "out.json").read_text())["metrics"]["map"] == pytest.approx(expected_zero)
    # against the observed single positives instead: rows 2 keeps only class 0
    observed = evaluate_recipe.main(["--checkpoint", str(tmp_path / "run"), "--dataset", str(tmp_path / "data"),
                                     "--labels", "observed"])["metrics"]
    assert observed["map"] == pytest.approx(_expected_maps(logits, [r[:1] for r in TEST_LABELS])[0])


def test_evaluate_timm_checkpoint_on_images(hub, tmp_path):
    import timm
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value
    from PIL import Image as PILImage

    rng = np.random.default_rng(1)
    images = [PILImage.fromarray(rng.integers(0, 256, size=(20 + 4 * i, 24, 3), dtype=np.uint8))
              for i in range(len(TEST_LABELS))]
    feats = Features({"image": Image(), "labels": List(ClassLabel(names=NAMES)),
                      "observed_labels": List(ClassLabel(names=NAMES)), "index": Value("int64")})
    split = Dataset.from_dict({"image": images, "labels": TEST_LABELS, "observed_labels": [r[:1] for r in TEST_LABELS],
                               "index": list(range(len(TEST_LABELS)))}, features=feats)
    DatasetDict(train=split, validation=split, test=split).save_to_disk(str(tmp_path / "data"))

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=len(NAMES), pretrained=False).eval()
    timm.models.save_for_hf(model, tmp_path / "run" / "model", model_config={"label_names": NAMES},
                            safe_serialization=True)
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"image_size": 32, "model": "test_resnet"}),
                                                  encoding="utf-8")
    (tmp_path / "run" / "results.json").write_text(json.dumps({"test_map": 1.0, "dataset": "tiny"}), encoding="utf-8")
    # independent expectation: squash each image to 32x32 bilinearly, normalise, run the model
    cfg = model.pretrained_cfg
    batch = torch.stack([
        torch.nn.functional.interpolate(
            torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float(), size=(32, 32), mode="bilinear",
            align_corners=False, antialias=True)[0] / 255 for img in images])
    batch = (batch - torch.tensor(cfg["mean"])[:, None, None]) / torch.tensor(cfg["std"])[:, None, None]
    with torch.no_grad():
        logits = model(batch).numpy()
    expected_zero, expected_skip = _expected_maps(logits, TEST_LABELS)
    metrics = evaluate_recipe.main(["--checkpoint", str(tmp_path / "run"), "--dataset", str(tmp_path / "data"),
                                    "--batch-size", "3"])["metrics"]
    assert metrics["map"] == pytest.approx(expected_zero, abs=1e-6)
    assert metrics["map_skip_empty"] == pytest.approx(expected_skip, abs=1e-6)
    assert {"precision@1", "recall@3", "top5_hit"} <= set(metrics)
    # published: the training image size travels with the model (training_config.yaml), not the timm default
    push_run_to_hub(tmp_path / "run", "org/eval-timm")
    assert model.pretrained_cfg["input_size"][-1] != 32
    from spl_losses.checkpoints import read_training_config

    assert read_training_config("hf-hub:org/eval-timm")["image_size"] == 32
    hub_metrics = evaluate_recipe.main(["--checkpoint", "hf-hub:org/eval-timm", "--dataset", str(tmp_path / "data")])
    assert hub_metrics["metrics"] == pytest.approx(metrics)
    hub.add_repo("org/no-training-record", {"config.json": b"{}"})
    assert read_training_config("hf-hub:org/no-training-record") is None


def test_evaluate_hub_checkpoint(hub, tmp_path):
    features = np.random.default_rng(2).normal(size=(len(TEST_LABELS), 4)).astype(np.float32)
    _features_dataset(tmp_path / "data", features)
    probe = _probe_run(tmp_path / "run", seed=3)
    push_run_to_hub(tmp_path / "run", "org/eval-probe")
    with torch.no_grad():
        expected_zero, _ = _expected_maps(probe(torch.from_numpy(features)).numpy(), TEST_LABELS)
    metrics = evaluate_recipe.main(["--checkpoint", "hf-hub:org/eval-probe", "--dataset", str(tmp_path / "data")])
    assert metrics["metrics"]["map"] == pytest.approx(expected_zero)


def test_evaluate_refuses_other_classes(tmp_path):
    features = np.zeros((len(TEST_LABELS), 4), dtype=np.float32)
    _features_dataset(tmp_path / "data", features)
    probe = LinearProbe(4, 3, label_names=["a", "x", "c"])
    probe.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="other class names"):
        evaluate_recipe.main(["--checkpoint", str(tmp_path / "model"), "--dataset", str(tmp_path / "data")])


def test_evaluate_reproduces_the_test_map_of_a_boostlu_run(tmp_path):
    """A BoostLU run exports the stock timm model (+ boostlu_alpha); evaluate.py scores it with BoostLU, as
    the recipe did, and reproduces results.json's test mAP; the plain timm model's logits would not."""
    import timm
    from accelerate.state import AcceleratorState

    train_recipe = load_recipe()
    data_flags = digits_flags(tmp_path / "data", num_test=24)
    out = tmp_path / "run"
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        results = train_recipe.main([
            *data_flags, "--model", "resnet10t", "--pretrained", "false",
            "--model-kwargs", "{channels: [16, 32, 64, 128], stem_width: 16}", "--image-size", "64",
            "--batch-size", "16", "--lr", "1e-3", "--epochs", "1", "--no-progress", "--loss", "ll_r", "--boostlu",
            "--boostlu-alpha", "4.0", "--output-dir", str(out)])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert json.loads((out / "model" / "config.json").read_text())["boostlu_alpha"] == 4.0
    # no --dataset: the run's recorded dataset and options
    result = evaluate_recipe.main(["--checkpoint", str(out), "--split", "test"])
    AcceleratorState._reset_state(reset_partial_state=True)
    assert result["boostlu_alpha"] == 4.0
    assert result["metrics"]["map"] == pytest.approx(results["test_map"], abs=1e-4)
    assert result["metrics"]["map_skip_empty"] == pytest.approx(results["test_map_skip_empty"], abs=1e-4)
    # the un-boosted logits of plain timm loading rank differently (64 px: a 2x2 feature map, where BoostLU is
    # not a monotone function of the plain logit as it is on a 1x1 map)
    from spl_losses.data import load_spml_dataset
    from spl_losses.labels import indices_to_dense
    from spl_losses.metrics import compute_metrics
    from spl_losses.training.evaluation import predict_loader
    from spl_losses.training.images import loader_for_split, protocol_transform

    plain = timm.create_model(f"local-dir:{out / 'model'}", pretrained=True).eval()
    test = load_spml_dataset("digits_mosaic", seed=1200, num_train=32, num_validation=16, num_test=24, image_size=16,
                             cache_dir=str(tmp_path / "data"))["test"]
    logits = predict_loader(plain, loader_for_split(test, protocol_transform(plain, 64), 8),
                            __import__("accelerate").Accelerator(), len(test))
    AcceleratorState._reset_state(reset_partial_state=True)
    plain_map = compute_metrics(logits, indices_to_dense(test["labels"], 10))["map"]
    assert plain_map != pytest.approx(results["test_map"], abs=1e-4)
