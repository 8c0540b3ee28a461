"""A 1 kB YAML alias bomb ("billion laughs") in a config, a --dataset-option value or a --loss-kwargs mapping
is refused at once, naming where it came from; ordinary aliases still work."""
import os
import re
import time

import pytest

from spl_losses.data.options import parse_dataset_options
from spl_losses.safe_yaml import MAX_EXPANDED_SIZE, BoundedSafeLoader, load_yaml
from spl_losses.training.flags import load_config_file, parse_args


def _bomb(levels=9, width=9, indent=""):
    """``a: &a [x, ...]``, ``b: &b [*a, ...]``, ...: width**levels scalars once expanded (9**9 = 387 million)."""
    names = "abcdefghijklmnop"
    lines = [f"{indent}{names[0]}: &{names[0]} [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"{indent}{names[i]}: &{names[i]} [{', '.join(['*' + names[i - 1]] * width)}]")
    return "\n".join(lines) + "\n"


def _refused_fast(call):
    start = time.perf_counter()
    with pytest.raises((ValueError, SystemExit)) as info:
        call()
    assert time.perf_counter() - start < 2.0
    return info


def test_the_bomb_is_small_and_would_be_huge():
    text = _bomb()
    assert len(text) < 1100 and 9 ** 9 > 300 * MAX_EXPANDED_SIZE


def test_load_yaml_refuses_the_bomb_naming_the_source():
    info = _refused_fast(lambda: load_yaml(_bomb(), "my.yaml"))
    assert re.search(r"my\.yaml: its aliases .* expand it to more than", str(info.value))


def test_a_config_with_a_bomb_is_refused(tmp_path):
    config = tmp_path / "bomb.yaml"
    config.write_text("epochs: 1\nloss_kwargs:\n" + _bomb(indent="  "))
    info = _refused_fast(lambda: load_config_file(str(config)))
    assert str(config) in str(info.value) and "alias" in str(info.value)


def test_a_bomb_in_a_configs_dataset_option_mapping_is_refused(tmp_path):
    config = tmp_path / "bomb.yaml"
    config.write_text("dataset_option:\n" + _bomb(indent="  "))
    info = _refused_fast(lambda: parse_args(["-c", str(config)]))
    assert str(config) in str(info.value)


def test_a_bomb_in_a_dataset_option_value_is_refused():
    value = "{" + _bomb().replace("\n", ", ").rstrip(", ") + "}"
    info = _refused_fast(lambda: parse_dataset_options([f"class_names={value}"]))
    assert "--dataset-option class_names" in str(info.value) and "alias" in str(info.value)


def test_a_bomb_in_loss_kwargs_is_one_error_line(capsys):
    value = "{" + _bomb().replace("\n", ", ").rstrip(", ") + "}"
    info = _refused_fast(lambda: parse_args(["--loss-kwargs", value]))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --loss-kwargs:") and "alias" in err and err.count("\n") == 1


def test_recursive_aliases_are_refused():
    with pytest.raises(ValueError, match="recursive"):
        load_yaml("a: &a [1, *a]\n", "rec.yaml")


def test_ordinary_aliases_and_documents_still_load(tmp_path, monkeypatch):
    assert load_yaml("base: &b {lr: 0.1}\nother: *b\n", "x") == {"base": {"lr": 0.1}, "other": {"lr": 0.1}}
    monkeypatch.setattr(BoundedSafeLoader, "max_expanded_size", 1000)
    big = "[" + ", ".join(["item"] * 2000) + "]"  # over the bound, but no alias expands it
    assert len(load_yaml(big, "big")) == 2000
    with pytest.raises(ValueError, match="alias"):
        load_yaml("a: &a [" + ", ".join(["item"] * 300) + "]\nb: [*a, *a, *a, *a]\n", "aliased")
    monkeypatch.undo()
    config = tmp_path / "ok.yaml"
    config.write_text("model_kwargs: &m {drop_rate: 0.1}\nteacher_kwargs: {grid: 2}\n")
    assert load_config_file(str(config))["model_kwargs"] == {"drop_rate": 0.1}


def test_invalid_yaml_names_its_source():
    with pytest.raises(ValueError, match=r"--dataset-option num_train is not valid YAML"):
        parse_dataset_options(["num_train=[1, 2"])


def test_user_yaml_is_read_through_load_yaml_only():
    """Every yaml.safe_load / yaml.load in the package is load_yaml's, apart from files that read the recipe's
    own config.yaml (to be switched by their owners: the subset check lets them)."""
    root = os.path.join(os.path.dirname(__file__), os.pardir)
    allowed = {os.path.join("spl_losses", "safe_yaml.py"), os.path.join("spl_losses", "training", "run_dir.py"),
               os.path.join("spl_losses", "hub", "card.py")}
    found = set()
    for top in ("spl_losses", "recipes"):
        for folder, _, files in os.walk(os.path.join(root, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    with open(path, encoding="utf-8") as f:
                        if re.search(r"yaml\.(safe_load|load|full_load|unsafe_load)\(", f.read()):
                            found.add(os.path.relpath(path, root))
    assert found <= allowed, found - allowed
