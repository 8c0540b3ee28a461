"""Exported checkpoints: where one lives, what its config says, loading its model and its loss state.

A checkpoint is named once and parsed here only (timm's ``parse_model_name`` reads the prefixes):

- ``hf-hub:ORG/NAME``: a model repository on the Hugging Face Hub;
- ``local-dir:PATH`` or a plain path: a model folder (``config.json`` + weights) or a run folder of
  ``recipes/train.py`` (whose ``model/`` folder is used).

An exported model is a stock timm model saved with ``timm.models.save_for_hf`` (``config.json`` has
``architecture``, ``num_classes``, ``label_names`` and the training preprocessing) or a
:class:`~spl_losses.models.LinearProbe`. The loss state travels beside it as ``loss_state.safetensors``:
the tensors of the loss's ``state_dict`` (ROLE estimator, LL-Cp / APL label matrices) in safetensors,
its non-tensor state as JSON metadata. Nothing here unpickles anything.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn

__all__ = ["CheckpointSource", "parse_checkpoint", "read_model_config", "read_training_config",
           "check_checkpoint_classes", "load_exported_model", "save_loss_state", "load_loss_state",
           "has_loss_state", "LOSS_STATE_FILENAME", "TRAINING_CONFIG_FILENAME", "TRAINING_RESULTS_FILENAME"]

LOSS_STATE_FILENAME = "loss_state.safetensors"
TRAINING_CONFIG_FILENAME = "training_config.yaml"
TRAINING_RESULTS_FILENAME = "training_results.json"
PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class CheckpointSource:
    """Where an exported checkpoint lives.

    Args:
        name: As the user wrote it.
        repo_id: ``ORG/NAME`` for a Hub checkpoint, else None.
        model_dir: The local model folder, else None.
        run_dir: The run folder holding ``model_dir`` (a run of ``recipes/train.py``), else None.
    """

    name: str
    repo_id: Optional[str] = None
    model_dir: Optional[Path] = None
    run_dir: Optional[Path] = None

    @property
    def is_hub(self) -> bool:
        return self.repo_id is not None

    @property
    def timm_name(self) -> str:
        """The name ``timm.create_model`` loads it by (``hf-hub:...`` or ``local-dir:...``)."""
        return f"hf-hub:{self.repo_id}" if self.is_hub else f"local-dir:{self.model_dir}"

    def file(self, filename: str, token: Optional[str] = None, required: bool = True) -> Optional[str]:
        """Local path of one of the checkpoint's files (downloaded from the Hub if needed).

        Args:
            filename: File name inside the model folder / repo.
            token: Hub token for a private repo.
            required: Raise when missing (else return None).
        """
        if self.is_hub:
            from huggingface_hub import file_exists, hf_hub_download

            if not required and not file_exists(self.repo_id, filename, token=token):
                return None
            return hf_hub_download(self.repo_id, filename, token=token)
        path = self.model_dir / filename
        if path.is_file():
            return str(path)
        if required:
            raise ValueError(f"checkpoint {self.name!r} has no {filename} in {str(self.model_dir)!r}")
        return None


def parse_checkpoint(name: PathLike) -> CheckpointSource:
    """Parse a checkpoint name: ``hf-hub:ORG/NAME``, ``local-dir:PATH``, a model folder or a run folder.

    Args:
        name: The checkpoint, as given by the user.

    Returns:
        A :class:`CheckpointSource`.

    Raises:
        ValueError: a local path without ``config.json`` (nor ``model/config.json``), or a bad Hub id.
    """
    from timm.models import parse_model_name

    name = os.fspath(name)
    prefix, rest = parse_model_name(name) if name.startswith(("hf-hub:", "local-dir:")) else (None, name)
    if prefix == "hf-hub":
        if rest.count("/") != 1 or not all(rest.split("/")):
            raise ValueError(f"checkpoint {name!r}: expected hf-hub:ORG/NAME")
        return CheckpointSource(name=name, repo_id=rest)
    folder = Path(os.path.expanduser(rest if prefix == "local-dir" else name))
    if (folder / "config.json").is_file():
        run_dir = folder.parent if (folder.parent / "config.yaml").is_file() and folder.name == "model" else None
        return CheckpointSource(name=name, model_dir=folder, run_dir=run_dir)
    if (folder / "model" / "config.json").is_file():
        return CheckpointSource(name=name, model_dir=folder / "model", run_dir=folder)
    raise ValueError(f"no exported model at {name!r}: expected a run folder of recipes/train.py, a model folder with "
                     "config.json (timm.models.save_for_hf), local-dir:PATH or hf-hub:ORG/NAME")


def _read_json(path: str, what: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {what} {path!r}: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"{what} {path!r} must hold a mapping, got {type(value).__name__}")
    return value


def read_model_config(checkpoint: Union[PathLike, CheckpointSource], token: Optional[str] = None) -> Dict[str, Any]:
    """The ``config.json`` of an exported model.

    Args:
        checkpoint: A checkpoint name or :class:`CheckpointSource`.
        token: Hub token for a private repo.

    Returns:
        The mapping (a timm export has ``architecture``, ``num_classes``, ``pretrained_cfg``, ``label_names``
        and, for a BoostLU run, ``boostlu_alpha``; a LinearProbe has ``in_features`` and ``num_classes``).
    """
    source = checkpoint if isinstance(checkpoint, CheckpointSource) else parse_checkpoint(checkpoint)
    return _read_json(source.file("config.json", token), "model config")


def read_training_config(checkpoint: Union[PathLike, CheckpointSource],
                         token: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The recipe's resolved training arguments recorded with a checkpoint, or None.

    Read from the run folder's ``config.yaml``, else the ``training_config.yaml`` that a push writes beside
    the model (locally and on the Hub).

    Args:
        checkpoint: A checkpoint name or :class:`CheckpointSource`.
        token: Hub token for a private repo.
    """
    from .safe_yaml import load_yaml

    source = checkpoint if isinstance(checkpoint, CheckpointSource) else parse_checkpoint(checkpoint)
    path = None
    if source.run_dir is not None and (source.run_dir / "config.yaml").is_file():
        path = str(source.run_dir / "config.yaml")
    if path is None:
        path = source.file(TRAINING_CONFIG_FILENAME, token, required=False)
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        config = load_yaml(f, path)
    return config if isinstance(config, dict) else None


def check_checkpoint_classes(model_config: Dict[str, Any], class_names: Sequence[str], what: str) -> None:
    """Refuse a checkpoint whose classes are not the dataset's (count, and names where both have them).

    timm would otherwise silently drop a trained classifier of another size, and a head of the same size
    trained on other classes would score the wrong ones.

    Args:
        model_config: The checkpoint's ``config.json``.
        class_names: The dataset's class names.
        what: How to name the checkpoint in the message (e.g. ``"--model hf-hub:ORG/NAME"``).
    """
    classes = model_config.get("num_classes")
    if classes is not None and int(classes) != len(class_names):
        raise ValueError(f"{what} predicts {classes} classes but the dataset has {len(class_names)}; use a dataset "
                         "with the checkpoint's classes, or start from a timm backbone name")
    names = model_config.get("label_names")
    if isinstance(names, list) and list(names) != list(class_names):
        differ = [(i, a, b) for i, (a, b) in enumerate(zip(names, class_names)) if a != b][:5]
        raise ValueError(f"{what} has the dataset's class count but other class names (first differences, as "
                         f"(position, checkpoint, dataset): {differ})")


def load_exported_model(checkpoint: Union[PathLike, CheckpointSource], token: Optional[str] = None,
                        apply_boostlu: bool = False) -> nn.Module:
    """Load an exported model: a timm model (``save_for_hf`` format) or a LinearProbe, in eval mode.

    Args:
        checkpoint: A run folder, its ``model/`` folder, ``local-dir:PATH`` or ``hf-hub:ORG/NAME``.
        token: Hub token for a private repo.
        apply_boostlu: For a BoostLU run (``boostlu_alpha`` in config.json: the stock timm model is saved, but
            its logits were BoostLU's when validated and tested) return ``BoostLU(model, alpha)``; otherwise
            the plain model (un-boosted logits).
    """
    import timm

    from .models import BoostLU, LinearProbe

    source = checkpoint if isinstance(checkpoint, CheckpointSource) else parse_checkpoint(checkpoint)
    config = read_model_config(source, token)
    if "architecture" in config:
        model = timm.create_model(source.timm_name, pretrained=True)
    elif {"in_features", "num_classes"} <= set(config):
        model = LinearProbe.from_pretrained(source.repo_id if source.is_hub else str(source.model_dir), token=token)
    else:
        raise ValueError(f"config.json of {source.name!r} is neither a timm export (no 'architecture') nor a "
                         "LinearProbe config (no 'in_features' / 'num_classes')")
    alpha = config.get("boostlu_alpha")
    if apply_boostlu and alpha is not None:
        model = BoostLU(model, alpha=float(alpha))
    return model.eval()


# ---------------------------------------------------------------------------------------------- loss state
def save_loss_state(loss: nn.Module, path: PathLike) -> Optional[Path]:
    """Save a loss's ``state_dict`` in safetensors: tensors as tensors, other state as JSON metadata.

    Args:
        loss: A loss module (any ``nn.Module``).
        path: The file to write, or a folder (then ``folder/loss_state.safetensors``).

    Returns:
        The file written, or None when the loss has no tensor state (nothing is written).
    """
    from safetensors.torch import save_file

    if not isinstance(loss, nn.Module):
        raise TypeError(f"loss must be an nn.Module, got {type(loss).__name__}")
    state = loss.state_dict()
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not any(v.dim() > 0 for v in tensors.values()):
        return None
    extra = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    try:
        extra_json = json.dumps(extra)
    except TypeError as err:
        raise TypeError(f"the loss's extra state must be JSON-serialisable to be saved, got {extra!r}") from err
    path = Path(path)
    if path.is_dir() or path.suffix != ".safetensors":
        path = path / LOSS_STATE_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "loss_name": getattr(loss, "loss_name", "") or "",
                "loss_class": type(loss).__name__, "extra_state": extra_json}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def _loss_state_file(source: PathLike, token: Optional[str]) -> str:
    name = os.fspath(source)
    if name.endswith(".safetensors") and not name.startswith(("hf-hub:", "local-dir:")):
        if not os.path.isfile(name):
            raise ValueError(f"loss state file {name!r} not found")
        return name
    return parse_checkpoint(name).file(LOSS_STATE_FILENAME, token)


def has_loss_state(checkpoint: PathLike, token: Optional[str] = None) -> bool:
    """Whether a checkpoint holds a ``loss_state.safetensors``.

    Args:
        checkpoint: A run folder, a model folder, ``local-dir:PATH`` or ``hf-hub:ORG/NAME``.
        token: Hub token for a private repo.
    """
    return parse_checkpoint(checkpoint).file(LOSS_STATE_FILENAME, token, required=False) is not None


def _read_loss_state(path: str):
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(path)
        extra = json.loads(metadata.get("extra_state") or "{}")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path!r} is not a loss state saved by spl_losses (safetensors): {err}") from err
    if not isinstance(extra, dict):
        raise ValueError(f"{path!r}: its extra_state metadata must be a JSON mapping")
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"the loss state in {path!r} holds NaN or infinite values in {key!r}")
    for key, value in extra.items():
        epoch = value.get("epoch", 0) if isinstance(value, dict) else 0
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"the loss state in {path!r} has an invalid epoch {epoch!r} in {key!r} "
                             "(expected an int >= 0)")
    return metadata, tensors, extra


def load_loss_state(loss: nn.Module, source: PathLike, token: Optional[str] = None, strict: bool = True) -> nn.Module:
    """Load a state saved by :func:`save_loss_state` into a loss built with the same sizes.

    Args:
        loss: The loss to load into (e.g. ``create_loss("role", num_classes=C, num_examples=N, ...)``).
        source: A ``.safetensors`` file, a run or model folder, ``local-dir:PATH`` or ``hf-hub:ORG/NAME``.
        token: Hub token for a private repo.
        strict: Require the saved and the loss's tensor keys to match exactly.

    Returns:
        ``loss``, with its state loaded.

    Raises:
        ValueError: naming the file: not a loss state, saved from another loss, NaN values, a negative epoch,
            or shapes that do not fit (another dataset size or class count).
    """
    if not isinstance(loss, nn.Module):
        raise TypeError(f"loss must be an nn.Module, got {type(loss).__name__}")
    path = _loss_state_file(source, token)
    metadata, tensors, extra = _read_loss_state(path)
    saved_name, own_name = metadata.get("loss_name", ""), getattr(loss, "loss_name", "") or ""
    if saved_name and own_name and saved_name != own_name:
        raise ValueError(f"the loss state in {path!r} was saved from loss {saved_name!r}, not {own_name!r}")
    own = loss.state_dict()
    state: Dict[str, Any] = {**tensors, **extra}
    for key, value in own.items():  # files without extra state keep the loss's current one
        if key.endswith("_extra_state") and key not in state:
            state[key] = value
    mismatched = [f"{k}: saved {tuple(v.shape)}, expected {tuple(own[k].shape)}" for k, v in tensors.items()
                  if isinstance(own.get(k), torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        raise ValueError(f"the loss state in {path!r} does not fit this loss (built for another dataset size or "
                         f"class count?): {mismatched}")
    try:
        loss.load_state_dict(state, strict=strict)
    except (RuntimeError, ValueError, TypeError) as err:
        raise ValueError(f"the loss state in {path!r} does not fit this loss: {err}") from err
    return loss

