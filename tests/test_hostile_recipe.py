"""Hostile and careless input to the recipe, the run folder and the loss-state files.

The rule: every input is checked where it enters, before any work, with a message naming the file, row,
flag or key; nothing the recipe did not write is modified or deleted; nothing read from disk executes
code; an interrupted or failed run leaves every earlier result intact.

| case | before | after (test) |
|---|---|---|
| a pickle planted in any file of a checkpoint, then ``--resume`` | ``recipe_state.pt`` unpickled (code ran) | refused before loading, nothing runs (``test_planted_pickle_never_runs``) |
| ``--output-dir`` with other files, no config.yaml | checkpoints/, model/ deleted, results overwritten | refused, naming files (``test_folder_of_other_files_is_refused_and_untouched``) |
| a user's files inside a run folder | rotation ``rmtree``-ed checkpoint folders | untouched through resume, rotation, export (``test_users_files_inside_a_run_folder_survive``) |
| unfinished run restarted without ``--resume`` | checkpoints deleted, restarted | refused (``test_training_pieces``) |
| YAML ``train_mode: end2end``, ``epochs: 1.7``, ``lr: [1, 2]``, ``image_size: 0`` | ran another protocol / failed deep in training | refused at parse (``test_recipe_cli::test_config_values_are_checked_like_flags``) |
| ``--lr -1``, ``--expected-num-pos nan`` | trained / failed an epoch later | refused at parse (``test_bad_numbers_are_refused_at_parse``) |
| a corrupt image | died in validation on a BytesIO, no row named | names split, row and file; earlier checkpoints intact (``test_corrupt_image_names_its_row``) |
| ``--resume`` after the dataset was rebuilt | continued, mixing two datasets | refused, naming the splits (``test_resume_after_the_dataset_changed_is_refused``) |
| two runs into one folder at once | both wrote; every epoch logged twice | the second is refused (``test_second_run_into_a_busy_folder_is_refused``) |
| an ``--output-dir`` that cannot be written | failed after building the dataset | refused before loading it (``test_unwritable_output_dir_fails_before_the_data_is_loaded``) |
| ``--log-with`` an uninstalled tracker, ``--push-to-hub`` without a token | warned / failed after training | refused before work (``test_recipe_cli::test_uninstalled_tracker_and_bad_push_fail_before_work``) |
| ``load_loss_state`` with epoch -5, NaN tensors, a garbage file | accepted / ``SafetensorError`` without the file | ValueError naming the file (``test_loss_state_files_are_checked``) |
"""
import pickle
import shutil

import datasets
import numpy as np
import pytest
import torch
from recipe_flags import digits as digits_flags
from test_recipe import recipe





def flags(data_cache, out, *extra):
    return [*digits_flags(data_cache, num_train=32, num_validation=16, num_test=16), "--model", "test_resnet",
            "--no-pretrained", "--image-size", "16", "--batch-size", "16", "--lr", "1e-3", "--epochs", "2",
            "--no-progress", "--output-dir", str(out), *extra]


class _Planted:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_planted_pickle_never_runs(tmp_path, data_cache):
    out = tmp_path / "run"
    run = flags(data_cache, out, "--loss", "role", "--train-mode", "end_to_end", "--stop-after", "1")
    assert recipe.main(run) is None
    folder = out / "checkpoints" / "epoch_001"
    files = [p for p in folder.iterdir()] + [p for p in (out / "checkpoints").iterdir() if p.is_file()]
    assert len(files) >= 5
    marker = tmp_path / "code_ran"
    for path in files:
        if path.name == ".spl_losses_checkpoint":  # only its existence is read, never its content
            continue
        original = path.read_bytes()
        path.write_bytes(pickle.dumps(_Planted(str(marker))))
        try:
            with pytest.raises(ValueError):
                recipe.main(run[:-2] + ["--resume"])
        finally:
            path.write_bytes(original)
        assert not marker.exists(), f"code ran when {path.name} was planted"
    finished = recipe.main(run[:-2] + ["--resume"])  # the untouched checkpoint still resumes
    assert finished["best_epoch"] in (1, 2)


def test_folder_of_other_files_is_refused_and_untouched(tmp_path, data_cache):
    out = tmp_path / "mine"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "thesis.tex").write_text("years of work")
    (out / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="not empty and holds no run"):
        recipe.main(flags(data_cache, out, "--loss", "an"))
    assert (out / "checkpoints" / "thesis.tex").read_text() == "years of work"
    assert (out / "results.json").read_text() == "{}"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "results.json"]


def test_users_files_inside_a_run_folder_survive(tmp_path, data_cache):
    out = tmp_path / "run"
    run = flags(data_cache, out, "--loss", "an", "--epochs", "3", "--keep-checkpoints", "1")
    assert recipe.main(run + ["--stop-after", "1"]) is None
    planted = {out / "notes.md": "mine", out / "checkpoints" / "epoch_001" / "notes.txt": "mine too",
               out / "checkpoints" / "my_best.safetensors": "not ours", out / "model" / "README_mine.md": "keep"}
    for path, text in planted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (out / "checkpoints" / "epoch_002").mkdir()  # a folder where the recipe will write its next checkpoint
    (out / "checkpoints" / "epoch_002" / "notes.txt").write_text("in a folder the recipe will use")
    planted[out / "checkpoints" / "epoch_002" / "notes.txt"] = "in a folder the recipe will use"
    recipe.main(run + ["--resume"])  # trains epochs 2 and 3; rotation removes epoch_001 and epoch_002's own files
    for path, text in planted.items():
        assert path.read_text() == text, path
    # rotation removed the recipe's own files; the folders stay while they hold the user's
    assert [p.name for p in (out / "checkpoints" / "epoch_001").iterdir()] == ["notes.txt"]
    assert [p.name for p in (out / "checkpoints" / "epoch_002").iterdir()] == ["notes.txt"]
    (out / "checkpoints" / "epoch_003").is_dir()
    assert (out / "model" / "model.safetensors").exists()


def test_unwritable_output_dir_fails_before_the_data_is_loaded(tmp_path, data_cache, monkeypatch):
    import spl_losses.training.run_data as training_data

    def never(*args, **kwargs):
        raise AssertionError("the data was loaded")

    monkeypatch.setattr(recipe, "load_data", never)
    (tmp_path / "blocked").write_text("a file where the folder should be")
    with pytest.raises(ValueError, match="cannot be written"):
        recipe.main(flags(data_cache, tmp_path / "blocked" / "run", "--loss", "an"))
    assert training_data.load_data is not never


def test_bad_numbers_are_refused_at_parse(tmp_path, data_cache):
    for bad in (["--lr", "-1"], ["--expected-num-pos", "nan"], ["--image-size", "0"], ["--epochs", "1.5"]):
        with pytest.raises(SystemExit):
            recipe.main(flags(data_cache, tmp_path / "x", *bad))
    assert not (tmp_path / "x").exists()


def _image_dataset(path, corrupt_test_row=None, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = ["a", "b", "c"]
    label_feature = datasets.List(datasets.ClassLabel(names=names))

    def png():
        import io

        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    def split(n, name):
        labels = [sorted(rng.choice(3, size=rng.integers(1, 3), replace=False).tolist()) for _ in range(n)]
        images = [png() for _ in range(n)]
        if name == "test" and corrupt_test_row is not None:
            images[corrupt_test_row] = {"bytes": b"not an image at all", "path": None}
        return datasets.Dataset.from_dict(
            {"image": images, "labels": labels, "observed_labels": [r[:1] for r in labels], "index": list(range(n))},
            features=datasets.Features({"image": datasets.Image(), "labels": label_feature,
                                        "observed_labels": label_feature, "index": datasets.Value("int64")}))

    datasets.DatasetDict({s: split(n, s) for s, n in (("train", 16), ("validation", 8), ("test", 8))}) \
        .save_to_disk(str(path))


def _image_flags(dataset, out, *extra):
    return ["--dataset", str(dataset), "--model", "test_resnet", "--no-pretrained", "--image-size", "12",
            "--batch-size", "8", "--lr", "1e-3", "--epochs", "2", "--loss", "an", "--expected-num-pos", "1.5",
            "--no-progress", "--output-dir", str(out), *extra]


def test_corrupt_image_names_its_row(tmp_path):
    _image_dataset(tmp_path / "data", corrupt_test_row=5)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"test row 5: the image \(its embedded bytes\) cannot be decoded"):
        recipe.main(_image_flags(tmp_path / "data", out))
    # the training epochs finished and were checkpointed before test was scored: intact, resumable
    assert (out / "checkpoints" / "epoch_002" / "recipe_state.json").is_file()
    assert not (out / "results.json").exists()


def test_resume_after_the_dataset_changed_is_refused(tmp_path):
    _image_dataset(tmp_path / "data", seed=0)
    out = tmp_path / "run"
    assert recipe.main(_image_flags(tmp_path / "data", out, "--stop-after", "1")) is None
    shutil.rmtree(tmp_path / "data")
    _image_dataset(tmp_path / "data", seed=1)  # rebuilt at the same path, other rows
    with pytest.raises(ValueError, match=r"the dataset changed since it was saved \(split\(s\) \['test', 'train', "
                                         r"'validation'\] differ\)"):
        recipe.main(_image_flags(tmp_path / "data", out, "--resume"))


def test_second_run_into_a_busy_folder_is_refused(tmp_path, data_cache):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    holder = open(out / "run.lock", "a+")  # another run (process) holds the folder
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
    try:
        with pytest.raises(ValueError, match="in use by another run"):
            recipe.main(flags(data_cache, out, "--loss", "an"))
    finally:
        holder.close()
    assert not (out / "metrics.jsonl").exists()
    assert recipe.main(flags(data_cache, out, "--loss", "an"))["test_map"] >= 0


def test_loss_state_files_are_checked(tmp_path):
    from safetensors.torch import save_file

    import spl_losses
    from spl_losses.checkpoints import load_loss_state, save_loss_state

    loss = spl_losses.create_loss("ll_cp", num_classes=3, num_examples=4)
    path = save_loss_state(loss, tmp_path / "good")
    state = {k: v for k, v in loss.state_dict().items()}
    bad_epoch = dict(state, _extra_state=torch.tensor(-5))
    save_file(bad_epoch, str(tmp_path / "epoch.safetensors"))
    with pytest.raises(ValueError, match="epoch.safetensors.*epoch must be an int >= 0"):
        load_loss_state(loss, tmp_path / "epoch.safetensors")
    role = spl_losses.create_loss("role", num_classes=3, num_examples=4, expected_num_pos=1.0)
    nan_state = {k: v.clone() for k, v in role.state_dict().items()}
    nan_state["estimator.logits"][0, 0] = float("nan")
    save_file(nan_state, str(tmp_path / "nan.safetensors"))
    with pytest.raises(ValueError, match="nan.safetensors.*NaN or infinite values in 'estimator.logits'"):
        load_loss_state(role, tmp_path / "nan.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="garbage.safetensors.* is not a loss state"):
        load_loss_state(loss, tmp_path / "garbage.safetensors")
    assert load_loss_state(loss, path) is loss
