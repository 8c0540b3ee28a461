"""run_cli: a user's error is one `error: ...` line and exit status 2, from the main process only; Ctrl-C is
one line and 130; bugs, --debug and SPL_LOSSES_DEBUG=1 keep the traceback."""
import pytest

from spl_losses.training.cli import debug_requested, is_main_process, run_cli


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "SPL_LOSSES_DEBUG"):
        monkeypatch.delenv(name, raising=False)


def _raising(err):
    def main(argv):
        print("working", flush=True)
        raise err
    return main


def _exit_code(main, argv=()):
    with pytest.raises(SystemExit) as info:
        run_cli(main, list(argv))
    return info.value.code


@pytest.mark.parametrize("err,line", [
    (ValueError("--output-dir runs/x holds a different run"), "error: --output-dir runs/x holds a different run\n"),
    (TypeError("bad option\n  on two lines"), "error: bad option on two lines\n"),
    (FileNotFoundError(2, "No such file or directory", "data/all.csv"),
     "error: No such file or directory: data/all.csv\n"),
    (ValueError(""), "error: ValueError\n"),
])
def test_a_user_error_is_one_line_and_exit_2(capsys, err, line):
    assert _exit_code(_raising(err)) == 2
    captured = capsys.readouterr()
    assert captured.err == line and "Traceback" not in captured.err
    assert captured.out == "working\n"


def test_success_exits_0_and_main_gets_argv(capsys):
    seen = []
    assert _exit_code(lambda argv: seen.append(argv), ["--epochs", "1"]) == 0
    assert seen == [["--epochs", "1"]] and capsys.readouterr().err == ""


@pytest.mark.parametrize("rank_vars", [{"RANK": "1"}, {"LOCAL_RANK": "3"}, {"RANK": "8", "LOCAL_RANK": "0"}])
def test_other_processes_exit_2_silently(capsys, monkeypatch, rank_vars):
    for name, value in rank_vars.items():
        monkeypatch.setenv(name, value)
    assert not is_main_process()
    assert _exit_code(_raising(ValueError("bad"))) == 2
    assert capsys.readouterr().err == ""


def test_the_main_process_of_a_launch_prints(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert is_main_process()
    assert _exit_code(_raising(ValueError("bad"))) == 2
    assert capsys.readouterr().err == "error: bad\n"


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    assert _exit_code(_raising(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "recipes/train.py: interrupted\n"


def test_argparse_exits_pass_through(capsys):
    def main(argv):
        raise SystemExit(2)
    assert _exit_code(main) == 2


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        run_cli(_raising(ZeroDivisionError("bug")), [])


def test_debug_flag_keeps_the_traceback():
    with pytest.raises(ValueError, match="bad"):
        run_cli(_raising(ValueError("bad")), ["--lr", "1", "--debug"])
    with pytest.raises(KeyboardInterrupt):
        run_cli(_raising(KeyboardInterrupt()), ["--debug"])


def test_debug_environment_keeps_the_traceback(monkeypatch):
    monkeypatch.setenv("SPL_LOSSES_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        run_cli(_raising(FileNotFoundError("x")), [])


def test_debug_requested_reads_the_switch_forms():
    assert debug_requested(["--debug"]) and debug_requested(["--debug", "true"]) and debug_requested(["--debug=1"])
    assert not debug_requested(["--debug", "false"]) and not debug_requested(["--debug=no"])
    assert not debug_requested([]) and not debug_requested(["--no-debug"])
    assert debug_requested([], {"SPL_LOSSES_DEBUG": "1"}) and not debug_requested([], {"SPL_LOSSES_DEBUG": "0"})


def test_the_recipe_flags_errors_print_once_under_a_launch(capsys, monkeypatch):
    from spl_losses.training.flags import parse_args

    monkeypatch.setenv("RANK", "2")
    with pytest.raises(SystemExit) as info:
        parse_args(["--bach-size", "8"])
    assert info.value.code == 2 and capsys.readouterr().err == ""
