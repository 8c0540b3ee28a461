"""The recipe's command line as a person types it: no abbreviations, one-line errors with the closest flags,
config keys with suggestions, and every default said once in --help."""
import re

import pytest
import yaml

from spl_losses.training.flags import FLAGS, build_parser, load_config_file, parse_args


def _error_of(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no usage text
    return err


def test_a_mistyped_flag_is_one_line_with_the_closest_flag(capsys):
    err = _error_of(["--bach-size", "8"], capsys)
    assert err.startswith("error: unrecognized flag --bach-size (did you mean --batch-size")
    assert "usage:" not in err


def test_abbreviations_are_refused_not_taken_for_the_flag(capsys):
    err = _error_of(["--epoch", "3"], capsys)
    assert "unrecognized flag --epoch (did you mean --epochs?)" in err
    err = _error_of(["--epoch=3"], capsys)
    assert "--epoch (did you mean --epochs?)" in err


def test_the_config_pre_parser_takes_no_abbreviation_either(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 2\n")
    assert parse_args(["--config", str(config)])[0].epochs == 2
    err = _error_of(["--conf", str(config)], capsys)
    assert "unrecognized flag --conf (did you mean --config?)" in err


def test_common_names_of_other_tools_are_suggested_for_flags(capsys):
    assert "--learning-rate (did you mean --lr" in _error_of(["--learning-rate", "0.1"], capsys)
    assert "--num-epochs (did you mean --epochs" in _error_of(["--num-epochs", "3"], capsys)


def test_a_stray_value_is_named(capsys):
    assert "unexpected argument(s) 8" in _error_of(["8"], capsys)


def test_bad_values_are_one_line_too(capsys):
    assert _error_of(["--epochs", "1.5"], capsys).startswith("error: argument --epochs: expected an integer")


@pytest.mark.parametrize("key,suggestion", [("learning_rate", "lr"), ("num_epochs", "epochs"), ("bs", "batch_size"),
                                            ("bach_size", "batch_size"), ("batch-size", "batch_size"),
                                            ("optimizer", "opt")])
def test_a_config_key_that_is_not_a_flag_gets_suggestions(tmp_path, key, suggestion):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({key: 3, "epochs": 1}))
    with pytest.raises(ValueError, match="not flags") as info:
        load_config_file(str(config))
    message = str(info.value)
    assert f"{key} (did you mean {suggestion}" in message and str(config) in message


def test_a_key_far_from_every_flag_is_named_without_suggestion(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("zzqqxx: 1\n")
    with pytest.raises(ValueError, match=r"not flags: zzqqxx; use flag names"):
        load_config_file(str(config))


def test_debug_is_a_switch_of_the_run_group():
    assert parse_args([])[0].debug is False
    assert parse_args(["--debug"])[0].debug is True
    flag = next(f for f in FLAGS if f.name == "--debug")
    assert flag.group == "run" and flag.switch and flag.help == "show tracebacks of errors"


def _help_entries(help_text):
    body = help_text.split("\noptions:", 1)[1]
    entries = {}
    for entry in filter(str.strip, re.split(r"\n  (?=-)", body)):  # one entry per option: names, then help
        entries[entry.split()[0].rstrip(",")] = " ".join(entry.split())
    return entries


def test_help_says_each_default_exactly_once():
    entries = _help_entries(build_parser().format_help())
    for flag in FLAGS:
        entry = entries[flag.name]
        assert entry.count("(default") == 1, entry
    assert "(default: $SPL_LOSSES_CACHE/features" in entries["--cache-dir"]
    assert "(default: None)" not in entries["--cache-dir"]


def test_evaluate_help_says_each_default_once():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), os.pardir, "recipes", "evaluate.py")
    spec = importlib.util.spec_from_file_location("evaluate_recipe_help", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entries = _help_entries(module.build_parser().format_help())
    assert "(default: the dataset recorded with the checkpoint)" in entries["--dataset"]
    for name, entry in entries.items():
        assert entry.count("(default") <= 1, entry
