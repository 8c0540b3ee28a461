"""What a person sees when a command fails: one ``error: ...`` line from one process, and did-you-mean hints.

- :func:`run_cli` runs a recipe's ``main`` and turns the errors a user can fix (``ValueError``,
  ``TypeError``, a missing or unreadable file) into one line ``error: <message>`` on stderr with exit
  status 2, printed by the main process only (under ``accelerate launch`` or ``torchrun`` every process
  fails alike; the others exit 2 silently). Ctrl-C gives one line and exit status 130. Other exceptions
  are bugs and keep their traceback; ``--debug`` on the command line or ``SPL_LOSSES_DEBUG=1`` keeps
  the traceback of every error.
- :class:`FlagParser` is an ``argparse.ArgumentParser`` without abbreviations (``--epoch`` is not
  ``--epochs``) whose errors are one line, with the closest flag names for an unknown flag.
- :func:`close_names` gives those suggestions (``difflib``, plus a table of common names of other
  tools: ``learning_rate`` -> ``lr``).

The rank is read from the launchers' environment (``RANK``, ``LOCAL_RANK``), so it is known before (or
without) ``accelerate`` being initialised.
"""
import argparse
import difflib
import os
import sys
from typing import Any, Callable, Iterable, List, Mapping, NoReturn, Optional, Sequence

__all__ = ["run_cli", "is_main_process", "debug_requested", "close_names", "unknown_arguments_message",
           "FlagParser", "USER_ERRORS", "DEBUG_ENV", "COMMON_NAMES"]

#: Exceptions whose message tells a user what to fix (HubPushError and RunDirBusyError are ValueErrors).
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
#: Environment switch that keeps tracebacks, like ``--debug``.
DEBUG_ENV = "SPL_LOSSES_DEBUG"
#: Names other training scripts use for the recipe's flags (config keys, underscores).
COMMON_NAMES = {
    "learning_rate": "lr", "base_lr": "lr", "num_epochs": "epochs", "max_epochs": "epochs", "n_epochs": "epochs",
    "epoch": "epochs", "bs": "batch_size", "batchsize": "batch_size", "train_batch_size": "batch_size",
    "optimizer": "opt", "optim": "opt", "scheduler": "sched", "lr_scheduler": "sched", "schedule": "sched",
    "wd": "weight_decay", "output": "output_dir", "out_dir": "output_dir", "output_path": "output_dir",
    "data_root": "data_dir", "root": "data_dir", "data_path": "data_dir", "img_size": "image_size",
    "input_size": "image_size", "resolution": "image_size", "num_workers": "workers", "model_name": "model",
    "arch": "model", "architecture": "model", "backbone": "model", "precision": "mixed_precision",
    "amp": "mixed_precision", "grad_clip": "clip_grad", "clip_grad_norm": "clip_grad", "max_grad_norm": "clip_grad",
    "gradient_accumulation_steps": "grad_accum_steps", "accumulation_steps": "grad_accum_steps",
    "warmup": "warmup_epochs", "random_seed": "seed", "dataset_options": "dataset_option",
    "dataset_name": "dataset", "loss_name": "loss", "loss_fn": "loss", "criterion": "loss",
    "resume_from_checkpoint": "resume", "k": "expected_num_pos", "hub_model_id": "push_to_hub",
}


def is_main_process(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether this is the process that prints: ``RANK`` and ``LOCAL_RANK`` each 0 or unset.

    Args:
        environ: The environment to read (default ``os.environ``).
    """
    env = os.environ if environ is None else environ
    for name in ("RANK", "LOCAL_RANK"):
        value = str(env.get(name, "") or "").strip()
        if value and value != "0":
            try:
                if int(value) != 0:
                    return False
            except ValueError:  # not a rank: not a launcher's variable
                continue
    return True


def debug_requested(argv: Sequence[str] = (), environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether tracebacks are wanted: ``--debug`` (or ``--debug true``) in ``argv``, or ``SPL_LOSSES_DEBUG=1``.

    Args:
        argv: The command-line arguments.
        environ: The environment to read (default ``os.environ``).
    """
    env = os.environ if environ is None else environ
    if str(env.get(DEBUG_ENV, "")).strip().lower() in ("1", "true", "yes", "on"):
        return True
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--debug":
            following = argv[i + 1].lower() if i + 1 < len(argv) else ""
            return following not in ("0", "false", "no", "off")
        if arg.startswith("--debug="):
            return arg.split("=", 1)[1].lower() in ("1", "true", "yes", "on")
    return False


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        message = f"{err.strerror}: {err.filename}"
    else:
        message = str(err)
        if isinstance(err, KeyError) and len(err.args) == 1:
            message = str(err.args[0])
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines) or type(err).__name__


def run_cli(main: Callable[[Optional[List[str]]], Any], argv: Optional[Sequence[str]] = None,
            prog: str = "recipes/train.py") -> NoReturn:
    """Run ``main(argv)`` as a command: user errors become one ``error: ...`` line, then exit.

    Meant for a script's ``if __name__ == "__main__": run_cli(main)``. Every process of a launch runs the
    same code and meets the same bad input, so only the main process (``RANK`` / ``LOCAL_RANK`` 0 or
    unset) prints; the others exit with the same status, silently. Errors other than
    :data:`USER_ERRORS` are bugs: they propagate with their traceback. ``SystemExit`` (argparse's
    errors and ``--help``) passes through.

    Args:
        main: The entry point; called with ``argv`` (None: it reads ``sys.argv[1:]`` itself).
        argv: Arguments (default ``sys.argv[1:]``, read here only to look for ``--debug``).
        prog: The command's name, in the Ctrl-C message.

    Raises:
        SystemExit: always: 0 after ``main`` returns, 2 after a user error, 130 after Ctrl-C.
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    debug = debug_requested(arguments)
    try:
        main(None if argv is None else list(argv))
    except KeyboardInterrupt:
        if debug:
            raise
        _say(f"{prog}: interrupted")
        raise SystemExit(130) from None
    except USER_ERRORS as err:
        if debug:
            raise
        _say(f"error: {_one_line(err)}")
        raise SystemExit(2) from None
    raise SystemExit(0)


def _say(line: str) -> None:
    """Print one line on stderr from the main process (after what stdout still holds)."""
    if not is_main_process():
        return
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    print(line, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ suggestions
def close_names(name: str, candidates: Iterable[str], aliases: Optional[Mapping[str, str]] = None,
                n: int = 3) -> List[str]:
    """The candidates closest to a mistyped ``name``: an alias from ``aliases`` first, then ``difflib``'s.

    Names are compared with dashes as underscores and without leading dashes, so the same call serves
    flags (``--bach-size``) and config keys (``bach_size``); results keep the candidates' spelling.

    Args:
        name: What the user wrote.
        candidates: The valid names.
        aliases: Other names of valid names (``{"learning_rate": "lr"}``), compared in the same form.
        n: At most this many suggestions.
    """
    def key(text: str) -> str:
        return text.lstrip("-").replace("-", "_").lower()

    by_key = {}
    for candidate in candidates:
        by_key.setdefault(key(candidate), candidate)
    wanted = key(name)
    found: List[str] = []
    if wanted in by_key:  # the same name with dashes for underscores (or the other way)
        found.append(by_key[wanted])
    target = {key(k): key(v) for k, v in (aliases or {}).items()}.get(wanted)
    if target in by_key and by_key[target] not in found:
        found.append(by_key[target])
    for match in difflib.get_close_matches(wanted, list(by_key), n=n, cutoff=0.6):
        if by_key[match] not in found:
            found.append(by_key[match])
    return found[:n]


def _did_you_mean(suggestions: Sequence[str]) -> str:
    if not suggestions:
        return ""
    return f" (did you mean {' or '.join(suggestions)}?)"


def unknown_arguments_message(extras: Sequence[str], options: Iterable[str],
                              aliases: Optional[Mapping[str, str]] = None) -> str:
    """The one-line message for arguments argparse did not recognise, with the closest flags.

    Args:
        extras: The unrecognised arguments (``parse_known_args``'s second value).
        options: The parser's option strings.
        aliases: Other names of options (config-key form: ``{"learning_rate": "lr"}``).
    """
    options = [o for o in options if o.startswith("--")]
    unknown = [arg for arg in extras if arg.startswith("-") and not _is_number(arg)]
    if not unknown:
        return (f"unexpected argument(s) {' '.join(extras)}: every value follows its flag "
                f"(--flag VALUE); --help lists the flags")
    parts = []
    for arg in unknown:
        flag = arg.split("=", 1)[0]
        parts.append(f"{flag}{_did_you_mean(close_names(flag, options, aliases))}")
    noun = "flag" if len(parts) == 1 else "flags"
    return f"unrecognized {noun} {', '.join(parts)}; --help lists the flags"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class FlagParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` for people: no abbreviations, one-line errors, did-you-mean.

    ``allow_abbrev`` is off (``--epoch 3`` is refused, not read as ``--epochs``); an error prints
    ``error: <message>`` on stderr (from the main process only, see :func:`is_main_process`) and exits
    with status 2, without the usage text; an unknown flag is named with the closest flags.

    Args:
        *args: ``argparse.ArgumentParser`` arguments.
        flag_aliases: Other names of the flags (config-key form), suggested for an unknown flag.
        **kwargs: ``argparse.ArgumentParser`` keyword arguments (``allow_abbrev`` defaults to False).
    """

    def __init__(self, *args, flag_aliases: Optional[Mapping[str, str]] = None, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.flag_aliases = dict(flag_aliases or {})

    def option_names(self) -> List[str]:
        """Every long option string of the parser and of its sub-commands' parsers."""
        names = []
        for action in self._actions:
            names += [option for option in action.option_strings if option.startswith("--")]
            if isinstance(action.choices, dict):  # sub-commands
                for sub in action.choices.values():
                    if isinstance(sub, FlagParser):
                        names += [n for n in sub.option_names() if n not in names]
        return names

    def parse_args(self, args=None, namespace=None):
        """``parse_known_args``, then an unknown argument is an error naming the closest flags."""
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(unknown_arguments_message(extras, self.option_names(), self.flag_aliases))
        return namespace

    def error(self, message: str) -> NoReturn:
        """Print ``error: message`` (main process only) and exit with status 2."""
        _say(f"error: {message}")
        raise SystemExit(2)
