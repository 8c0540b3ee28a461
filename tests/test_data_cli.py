"""`python -m spl_losses.data`: build, write (save_to_disk / Parquet), card, report, push; the card itself."""
import json
import os
import shutil

import datasets
import pytest
from huggingface_hub import DatasetCard
from PIL import Image

from spl_losses.data.__main__ import main
from spl_losses.data.card import make_dataset_card, size_category

TINY = ["--dataset-option", "num_train=40", "--dataset-option", "num_validation=10", "--dataset-option", "num_test=10"]


def test_build_arrow_writes_dataset_card_and_report(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["build", "digits_mosaic", "--output", str(out), "--seed", "3",
               "--cache-dir", str(tmp_path / "cache"), *TINY])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "40 examples" in printed and "dropped without positive: 0" in printed
    dsd = datasets.load_from_disk(str(out))
    assert [len(dsd[s]) for s in ("train", "validation", "test")] == [40, 10, 10]
    report = json.loads((out / "build_report.json").read_text())
    assert report["seed"] == 3 and report["splits"]["validation"]["num_examples"] == 10
    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "cc-by-4.0"
    assert "single-positive-labels" in card.data.tags
    assert "Seed: 3." in card.text and "| validation | 10 | 0 |" in card.text
    assert "`0`, `1`" in card.text and "@misc{alpaydin1998digits" in card.text
    assert f"datasets.load_from_disk({str(out)!r})" in card.text
    assert "3.439" in card.text


def _files_tree(root):
    os.makedirs(root / "img")
    rows = {"train": [(f"img/a{i}.png", ["x", "y", "x|y"][i % 3]) for i in range(10)],
            "test": [(f"img/b{i}.png", "y") for i in range(3)]}
    for split, items in rows.items():
        with open(root / f"{split}.csv", "w") as f:
            f.write("path,labels\n" + "".join(f"{p},{lab}\n" for p, lab in items))
        for i, (p, _) in enumerate(items):
            Image.new("RGB", (3, 2), (10 * i, 0, 0)).save(root / p)


def test_build_parquet_embeds_images_and_loads_back(tmp_path):
    raw = tmp_path / "raw"
    _files_tree(raw)
    out = tmp_path / "pq"
    assert main(["build", "multilabel_files", "--data-dir", str(raw), "--output", str(out), "--format", "parquet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert sorted(os.listdir(out / "data")) == [f"{s}-00000-of-00001.parquet" for s in ("test", "train", "validation")]
    shutil.rmtree(raw)  # the images must be inside the Parquet files
    dsd = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache2"))
    assert [len(dsd[s]) for s in ("train", "validation", "test")] == [8, 2, 3]
    assert dsd["train"].features["labels"].feature.names == ["x", "y"]
    image = dsd["test"][2]["image"]
    assert image.size == (3, 2) and image.mode == "RGB" and image.getpixel((0, 0)) == (20, 0, 0)
    assert "configs" in DatasetCard.load(out / "README.md").data.to_dict()


def test_cli_errors_exit_2_with_message(tmp_path, capsys):
    assert main(["build", "no_such_set", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Unknown dataset 'no_such_set'" in err and "digits_mosaic" in err
    assert main(["build", "digits_mosaic"]) == 2
    assert "--output" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["build", "digits_mosaic", "--output", str(tmp_path / "full")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["build", "multilabel_files", "--data-dir", str(tmp_path / "missing"), "--output", str(tmp_path / "o2"),
                 "--cache-dir", str(tmp_path / "c")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["build", "digits_mosaic", "--output", str(tmp_path / "o3"), "--dataset-option", "num_train"]) == 2
    assert "--dataset-option expects KEY=VALUE" in capsys.readouterr().err


def test_old_flag_spellings_are_aliases(tmp_path):
    raw = tmp_path / "raw"
    _files_tree(raw)
    assert main(["build", "multilabel_files", "--root", str(raw), "--output", str(tmp_path / "out"),
                 "--option", "val_fraction=0.5", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert json.loads((tmp_path / "out" / "build_report.json").read_text())["val_fraction"] == 0.5


def test_readme_single_listing_example(tmp_path, monkeypatch):
    """The README's bring-your-own-CSV example: one listing, labels joined by |, paths relative to it."""
    data = tmp_path / "data"
    for i in range(10):
        os.makedirs(data / "images", exist_ok=True)
        Image.new("RGB", (3, 3), (i, 0, 0)).save(data / "images" / f"{i:04d}.jpg")
    (data / "all.csv").write_text("path,labels\n" + "".join(
        f"images/{i:04d}.jpg,{['cat|dog', 'traffic light'][i % 2]}\n" for i in range(10)))
    monkeypatch.chdir(tmp_path)
    assert main(["build", "multilabel_files", "--dataset-option", "listing=data/all.csv", "--output", "out/mine",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    dsd = datasets.load_from_disk(str(tmp_path / "out" / "mine"))
    assert dsd["train"].features["labels"].feature.names == ["cat", "dog", "traffic light"]
    assert [len(dsd[s]) for s in ("train", "validation", "test")] == [6, 2, 2]


def test_list_command(capsys):
    assert main(["list"]) == 0
    listed = capsys.readouterr().out.split("\n")
    assert "digits_mosaic (k=3.439)" in listed and "multilabel_files" in listed


def test_push_to_hub_pushes_data_then_merged_card(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub",
                        lambda self, repo_id, **kw: calls.append(("data", repo_id, sorted(self))))
    monkeypatch.setattr(DatasetCard, "load", classmethod(
        lambda cls, repo_id, **kw: DatasetCard("---\ndataset_info:\n  features: []\nlicense: other\n---\nold")))
    monkeypatch.setattr(DatasetCard, "push_to_hub", lambda self, repo_id, **kw: calls.append(("card", repo_id, self)))
    assert main(["build", "digits_mosaic", "--push-to-hub", "org/digits", "--cache-dir", str(tmp_path / "c"),
                 *TINY]) == 0
    assert calls[0] == ("data", "org/digits", ["test", "train", "validation"])
    kind, repo, card = calls[1]
    assert (kind, repo) == ("card", "org/digits")
    assert card.data.license == "cc-by-4.0"  # ours wins
    assert "dataset_info" in card.data.to_dict()  # datasets' metadata kept
    assert 'datasets.load_dataset("org/digits")' in card.text


def test_card_for_features_dataset_without_report():
    label = datasets.List(datasets.ClassLabel(names=["a", "b"]))
    features = datasets.Features({"features": datasets.List(datasets.Value("float32")), "labels": label,
                                  "observed_labels": label, "index": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"features": [[0.0]], "labels": [[1]], "observed_labels": [[1]], "index": [0]},
                                    features=features)
    card = make_dataset_card(datasets.DatasetDict(train=ds, validation=ds, test=ds), license="mit")
    assert card.data.license == "mit"
    assert card.data.size_categories in ("n<1K", ["n<1K"])
    assert "pre-extracted feature vector" in card.text and "Seed: not recorded." in card.text
    with pytest.raises(TypeError, match="DatasetDict"):
        make_dataset_card(ds)


def test_size_category_boundaries():
    assert [size_category(n) for n in (0, 999, 1000, 65_665, 123_000, 2_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M"]


@pytest.mark.parametrize("report, phrases", [
    ({"seed": 5}, ["`observed_sampling`): `uniform`", "chosen uniformly at random", "SplitMix64",
                   "smallest key wins."]),
    ({"seed": 5, "observed_sampling": "size"}, ["`size`", "annotated object area", "Arroyo, Perona & Cole",
                                                "exponential race"]),
    ({"seed": 5, "observed_sampling": "weights", "class_weights_file": "/x/w.json"}, ["per-class weight (`w.json`)"]),
    ({"seed": 5, "sampling_rng": "reference", "split_seed": 9},
     ["`sampling_rng`): `reference`", "numpy.random.RandomState(seed)", "RandomState(9).permutation"]),
    ({"seed": 5, "sampling_rng": "reference", "observed_sampling": "loc"},
     ["distance from the box centre", "random.choices"]),
])
def test_card_states_the_sampling_rule_and_stream(report, phrases):
    label = datasets.List(datasets.ClassLabel(names=["a", "b"]))
    features = datasets.Features({"features": datasets.List(datasets.Value("float32")), "labels": label,
                                  "observed_labels": label, "index": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"features": [[0.0]], "labels": [[1]], "observed_labels": [[1]], "index": [0]},
                                    features=features)
    text = make_dataset_card(datasets.DatasetDict(train=ds, validation=ds, test=ds), report=report).text
    for phrase in phrases:
        assert phrase in text, phrase
