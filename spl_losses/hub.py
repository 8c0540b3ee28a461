"""The Hugging Face Hub: publish a training run's model (with its model card and loss state) and load it back.

A run directory of ``recipes/train.py`` (see the run-directory contract) holds ``config.yaml``,
``results.json`` and ``model/``: a stock timm model saved with ``timm.models.save_for_hf`` (config.json with
``label_names`` + model.safetensors) or a :class:`~spl_losses.models.LinearProbe` (huggingface_hub
``PyTorchModelHubMixin``) for feature datasets, plus ``loss_state.safetensors`` when the loss keeps state.

- :func:`push_run_to_hub` writes the model card (``model/README.md``) and the training record
  (``model/training_config.yaml``, ``model/training_results.json``) and uploads ``model/``: a timm model
  then loads anywhere with ``timm.create_model("hf-hub:ORG/NAME", pretrained=True)``, no import of this
  package needed; a LinearProbe with ``LinearProbe.from_pretrained("ORG/NAME")``.
- :func:`build_model_card`: the card from config.yaml + results.json (backbone, loss, train mode, dataset
  and its single-positive seed, hyperparameters, ``model-index`` with mAP on validation and test in both
  conventions, the method's citation, a usage snippet).
- :func:`save_loss_state` / :func:`load_loss_state`: the loss's ``state_dict`` (ROLE estimator, LL-Cp /
  APL label matrices, epoch) in safetensors, to continue training.
- :func:`load_exported_model`: a run dir, a model dir, ``local-dir:PATH`` or ``hf-hub:ORG/NAME`` -> module
  (``apply_boostlu=True`` wraps a BoostLU run's model in :class:`~spl_losses.models.BoostLU`, as it was
  scored); :func:`read_model_config`: its config.json.

Failures of a push (no token, the Hub unreachable, a token the Hub rejects, a repo that already holds
something else) raise :class:`HubPushError` with a message saying what to do; the local export is
written completely before anything is sent, so it is intact on disk whatever happens.
"""
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from torch import nn

__all__ = [
    "HubPushError",
    "LOSS_STATE_FILENAME",
    "TRAINING_CONFIG_FILENAME",
    "TRAINING_RESULTS_FILENAME",
    "write_training_record",
    "MODEL_CARD_TAG",
    "build_model_card",
    "write_model_card",
    "push_run_to_hub",
    "check_push_access",
    "save_loss_state",
    "load_loss_state",
    "load_exported_model",
    "read_model_config",
    "has_loss_state",
    "read_run",
]

LOSS_STATE_FILENAME = "loss_state.safetensors"
TRAINING_CONFIG_FILENAME = "training_config.yaml"
TRAINING_RESULTS_FILENAME = "training_results.json"
#: Tag of every model card this module writes: a repo whose card has it is "ours" and may be updated.
MODEL_CARD_TAG = "spl_losses"
#: Files never uploaded: pickled weights (the export is safetensors only).
_IGNORE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt", ".cache/*", ".gitattributes"]
_HUB_PREFIX = "hf-hub:"
_LOCAL_PREFIX = "local-dir:"

PathLike = Union[str, os.PathLike]


class HubPushError(ValueError):
    """A push to the Hub failed; the message says why and where the intact local export is."""


# ---------------------------------------------------------------------------------------------- citations
_COLE_2021 = """@inproceedings{cole2021multi,
  title     = {Multi-Label Learning from Single Positive Labels},
  author    = {Cole, Elijah and Mac Aodha, Oisin and Lorieul, Titouan and Perona, Pietro and Morris, Dan and Jojic, Nebojsa},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2021}
}"""
_ZHOU_2022 = """@inproceedings{zhou2022acknowledging,
  title     = {Acknowledging the Unknown for Multi-label Learning with Single Positive Labels},
  author    = {Zhou, Donghao and others},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2022}
}"""
_KIM_2022 = """@inproceedings{kim2022large,
  title     = {Large Loss Matters in Weakly Supervised Multi-Label Classification},
  author    = {Kim, Youngwook and Kim, Jae Myung and Akata, Zeynep and Lee, Jungwoo},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2022}
}"""
_KIM_2023 = """@inproceedings{kim2023bridging,
  title     = {Bridging the Gap between Model Explanations in Partially Annotated Multi-label Classification},
  author    = {Kim, Youngwook and others},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023}
}"""
_ZHANG_2021 = """@article{zhang2021simple,
  title   = {Simple and Robust Loss Design for Multi-Label Learning with Missing Labels},
  author  = {Zhang, Youcai and others},
  journal = {arXiv preprint arXiv:2112.07368},
  year    = {2021}
}"""
_RIDNIK_2021 = """@inproceedings{ridnik2021asymmetric,
  title     = {Asymmetric Loss for Multi-Label Classification},
  author    = {Ridnik, Tal and others},
  booktitle = {IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2021}
}"""
_CHEN_2024 = """@inproceedings{chen2024boosting,
  title     = {Boosting Single Positive Multi-label Classification with Generalized Robust Loss},
  author    = {Chen, Yanxi and others},
  booktitle = {International Joint Conference on Artificial Intelligence (IJCAI)},
  year      = {2024}
}"""
#: Loss-name prefix -> the paper of the method (Cole et al. is cited for the benchmark in every card).
_METHOD_CITATIONS = {
    "em": _ZHOU_2022, "ll_": _KIM_2022, "boostlu": _KIM_2023, "hill": _ZHANG_2021, "splc": _ZHANG_2021,
    "asl": _RIDNIK_2021, "gr": _CHEN_2024,
}
_DATASET_NAMES = {"voc2012": "PASCAL VOC 2012", "coco2014": "MS-COCO 2014", "nuswide": "NUS-WIDE",
                  "cub200": "CUB-200-2011"}


def citations_for_loss(loss: Optional[str], boostlu: bool = False) -> List[str]:
    """BibTeX entries to cite for a run: the method's paper, then Cole et al. (the SPML benchmark).

    Args:
        loss: The loss's registry name (e.g. ``"role"``, ``"em_apl"``, ``"ll_r"``).
        boostlu: Whether the run used BoostLU.
    """
    entries = []
    name = (loss or "").lower()
    for prefix, entry in _METHOD_CITATIONS.items():
        if name.startswith(prefix) and entry not in entries:
            entries.append(entry)
    if boostlu and _KIM_2023 not in entries:
        entries.append(_KIM_2023)
    entries.append(_COLE_2021)
    return entries


# ---------------------------------------------------------------------------------------------- run dir
def _model_dir(run_or_model_dir: Path) -> Path:
    return run_or_model_dir / "model" if (run_or_model_dir / "model" / "config.json").is_file() else run_or_model_dir


def read_run(run_dir: PathLike) -> Dict[str, Any]:
    """Read and check a run directory of ``recipes/train.py``.

    Args:
        run_dir: The ``--output-dir`` of a training run.

    Returns:
        ``{"config": dict, "results": dict, "model_dir": Path, "model_config": dict}``.
    """
    import yaml

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory {str(run_dir)!r} does not exist")
    expected = ["config.yaml", "results.json", "model/config.json"]
    missing = [name for name in expected if not (run_dir / name).is_file()]
    model_dir = run_dir / "model"
    if not (model_dir / "model.safetensors").is_file():
        missing.append("model/model.safetensors")
    if missing:
        raise ValueError(f"run directory {str(run_dir)!r} is incomplete: missing {missing} "
                         "(expected the output of recipes/train.py --output-dir)")
    with open(run_dir / "config.yaml", encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    with open(run_dir / "results.json", encoding="utf-8") as f:
        results = json.load(f)
    with open(model_dir / "config.json", encoding="utf-8") as f:
        model_config = json.load(f)
    if not isinstance(config, dict) or not isinstance(results, dict):
        raise ValueError(f"config.yaml and results.json of {str(run_dir)!r} must each hold a mapping")
    return {"config": config, "results": results, "model_dir": model_dir, "model_config": model_config}


def _is_timm_export(model_config: Dict[str, Any]) -> bool:
    return "architecture" in model_config


def _number(value) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


# ---------------------------------------------------------------------------------------------- model card
def build_model_card(
        config: Dict[str, Any],
        results: Dict[str, Any],
        repo_id: str,
        model_config: Optional[Dict[str, Any]] = None,
        license: Optional[str] = None,
):
    """Build the model card of a run.

    Args:
        config: The run's resolved arguments (config.yaml).
        results: The run's results.json.
        repo_id: ``ORG/NAME`` the model is published as (used in the usage snippet and model-index).
        model_config: The exported model's config.json (tells a timm model from a LinearProbe).
        license: Optional license id for the card's metadata.

    Returns:
        A ``huggingface_hub.ModelCard``; its metadata's ``model-index`` holds mAP on validation and test
        in both conventions (``map``: classes without positives count as AP 0, as Cole et al.;
        ``map_skip_empty``: such classes are left out).
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    model_config = model_config or {}
    timm_export = _is_timm_export(model_config)
    dataset = str(results.get("dataset") or config.get("dataset") or "unknown")
    model = str(results.get("model") or config.get("model") or model_config.get("architecture") or "unknown")
    loss = str(results.get("loss") or config.get("loss") or "unknown")
    train_mode = str(results.get("train_mode") or config.get("train_mode") or "unknown")
    seed = results.get("observed_seed", config.get("observed_seed"))
    dataset_name = _DATASET_NAMES.get(dataset, dataset)
    name = repo_id.split("/")[-1]

    dataset_args = {"single_positive_seed": seed} if seed is not None else None
    eval_results = []
    for split, prefix in (("validation", "val"), ("test", "test")):
        for metric_type, metric_name in (
                ("map", f"mAP ({split}; classes without positives count as AP 0, as Cole et al.)"),
                ("map_skip_empty", f"mAP ({split}; classes without positives skipped)")):
            suffix = "" if metric_type == "map" else "_skip_empty"
            value = _number(results.get(f"{prefix}_map{suffix}"))
            if value is None:
                continue
            eval_results.append(EvalResult(
                task_type="image-classification", task_name="Multi-label image classification (single positive labels)",
                dataset_type=dataset, dataset_name=dataset_name, dataset_split=split, dataset_args=dataset_args,
                metric_type=metric_type, metric_name=metric_name, metric_value=round(value, 4)))

    tags = ["image-classification", "multi-label-classification", "single-positive-multi-label",
            MODEL_CARD_TAG, f"loss-{loss}"]
    if timm_export:
        tags.insert(1, "timm")
    card_data = ModelCardData(
        library_name="timm" if timm_export else "spl_losses",
        pipeline_tag="image-classification" if timm_export else None,
        license=license,
        tags=tags,
        datasets=[dataset] if "/" in dataset else None,
        metrics=["map"],
        model_name=name,
        eval_results=eval_results or None,
    )

    label_names = model_config.get("label_names") or results.get("label_names") or []
    lines = [f"# {name}", ""]
    kind = f"`{model}`" + (" (timm)" if timm_export else " (a linear probe on fixed features)")
    lines += [f"{kind} trained for multi-label classification of **{dataset_name}** ({len(label_names)} classes) "
              f"from **single positive labels**: each training image carries one positive label, every other "
              f"class is unobserved. Trained with the `{loss}` loss of the `spl_losses` package "
              f"in the `{train_mode}` mode.", ""]
    lines += ["## Training", "", "| | |", "|---|---|",
              f"| Backbone | `{model}` |", f"| Loss | `{loss}` |", f"| Train mode | `{train_mode}` |",
              f"| Dataset | `{dataset}` |",
              f"| Single-positive seed | {seed if seed is not None else 'unknown'} |"]
    if "best_epoch" in results:
        lines.append(f"| Best epoch (by validation mAP) | {results['best_epoch']} |")
    if config.get("val_set_variant"):
        lines.append(f"| Validation labels | `{config['val_set_variant']}` |")
    lines += ["", "All resolved training arguments:", "", "```yaml"]
    import yaml
    lines += [yaml.safe_dump(config, sort_keys=True, default_flow_style=False).rstrip(), "```", ""]

    lines += ["## Results", "", "mAP in percent, against the full labels. Two conventions: *AP 0* counts a class "
              "without positives in the evaluated split as AP 0 (the reference of Cole et al.); "
              "*skip* leaves such classes out.", "",
              "| Split | mAP (AP 0) | mAP (skip) |", "|---|---|---|"]
    for split, prefix in (("validation", "val"), ("test", "test")):
        zero, skip = _number(results.get(f"{prefix}_map")), _number(results.get(f"{prefix}_map_skip_empty"))
        lines.append(f"| {split} | {'-' if zero is None else f'{zero:.2f}'} | {'-' if skip is None else f'{skip:.2f}'} |")
    test_metrics = results.get("test_metrics") or {}
    others = {k: v for k, v in test_metrics.items() if k not in ("map", "map_skip_empty") and _number(v) is not None}
    if others:
        lines += ["", "Other test metrics (percent): " + ", ".join(f"{k} {float(v):.2f}" for k, v in others.items())]
    lines.append("")

    lines += ["## Usage", ""]
    size = config.get("image_size") or (model_config.get("pretrained_cfg") or {}).get("input_size", [3, 224, 224])[-1]
    alpha = model_config.get("boostlu_alpha")
    if timm_export:
        lines += ["```python", "import timm, torch", "from PIL import Image"]
        if alpha is not None:
            lines += ["from spl_losses.models import BoostLU"]
        lines += ["", f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()']
        if alpha is not None:
            lines += [f"# trained and scored with BoostLU (alpha {alpha}): plain timm gives the un-boosted logits",
                      f"model = BoostLU(model, alpha={alpha}).eval()"]
        lines += [f"# the training preprocessing, recorded in config.json: squash to {size}x{size} (no crop), "
                  "the model's normalisation",
                  "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))",
                  'label_names = model.pretrained_cfg["label_names"]',
                  "with torch.no_grad():",
                  '    probs = torch.sigmoid(model(transform(Image.open("image.jpg").convert("RGB")).unsqueeze(0)))[0]',
                  "print({label_names[i]: round(float(p), 3) for i, p in enumerate(probs) if p > 0.5})", "```", ""]
        if alpha is not None:
            lines += [f"This model was trained with BoostLU (alpha {alpha}) and the results above were measured "
                      "with it. The weights are those of the stock timm model, so "
                      "`timm.create_model` alone loads it and gives the **un-boosted** logits; wrap it in "
                      "`spl_losses.models.BoostLU` as above to reproduce the reported mAP "
                      "(`recipes/evaluate.py` does so).", ""]
    else:
        lines += ["```python", "import torch", "from spl_losses.models import LinearProbe", "",
                  f'probe = LinearProbe.from_pretrained("{repo_id}").eval()',
                  "# probe.backbone and probe.preprocessing say how to compute the (B, in_features) features",
                  "probs = torch.sigmoid(probe(features))", "```", ""]
    lines += ["Evaluate or continue training with spl_losses:", "", "```bash",
              f"python recipes/evaluate.py --checkpoint hf-hub:{repo_id} --dataset {dataset} --split test",
              f"python recipes/train.py --model hf-hub:{repo_id} --dataset {dataset} --loss {loss} ...", "```", ""]
    lines += ["## Citation", "", "```bibtex",
              "\n\n".join(citations_for_loss(loss, boostlu=bool(config.get("boostlu")))), "```", ""]
    return ModelCard.from_template(card_data, template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n",
                                   body="\n".join(lines))


def write_model_card(run_dir: PathLike, repo_id: str, license: Optional[str] = None) -> Path:
    """Write the run's model card to ``run_dir/model/README.md``.

    Args:
        run_dir: A run directory of ``recipes/train.py``.
        repo_id: ``ORG/NAME`` the model is (to be) published as.
        license: Optional license id for the card's metadata.

    Returns:
        The README.md path.
    """
    run = read_run(run_dir)
    card = build_model_card(run["config"], run["results"], repo_id, model_config=run["model_config"], license=license)
    text = str(card)
    if (run["model_dir"] / LOSS_STATE_FILENAME).is_file():
        text = text.replace("## Citation", "## Loss state\n\n"
                            f"`{LOSS_STATE_FILENAME}` holds the loss's state at the end of training (e.g. ROLE's label "
                            "estimates, LL-Cp / APL label matrices). Load it to continue training:\n\n```python\n"
                            "from spl_losses.hub import load_loss_state\n"
                            f'load_loss_state(loss_fn, "hf-hub:{repo_id}")\n```\n\n## Citation', 1)
    path = run["model_dir"] / "README.md"
    path.write_text(text, encoding="utf-8")
    return path


def write_training_record(run_dir: PathLike) -> List[Path]:
    """Copy the run's config.yaml and results.json into ``model/`` as ``training_config.yaml`` and
    ``training_results.json``, so the published repo records how it was trained (machine-readable; e.g.
    ``recipes/evaluate.py`` reads the training image size from it).

    Args:
        run_dir: A run directory of ``recipes/train.py``.

    Returns:
        The two files written.
    """
    import shutil

    run_dir = Path(run_dir)
    read_run(run_dir)  # checks the run directory
    written = []
    for source, target in (("config.yaml", TRAINING_CONFIG_FILENAME), ("results.json", TRAINING_RESULTS_FILENAME)):
        shutil.copyfile(run_dir / source, run_dir / "model" / target)
        written.append(run_dir / "model" / target)
    return written


# ---------------------------------------------------------------------------------------------- push
def _is_network_error(err: BaseException) -> bool:
    """Connection / timeout errors of the HTTP client huggingface_hub uses (httpx2, httpx or requests)."""
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    root = type(err).__module__.split(".")[0]
    return root in ("httpx2", "httpx", "requests", "urllib3") and "Status" not in type(err).__name__


def _remote_conflict(api, repo_id: str) -> Optional[List[str]]:
    """The files of an existing repo that was not published by this module, or None."""
    from huggingface_hub.errors import RepositoryNotFoundError
    from huggingface_hub import ModelCard

    try:
        files = api.list_repo_files(repo_id, repo_type="model")
    except RepositoryNotFoundError:
        return None
    content = [f for f in files if f != ".gitattributes"]
    if not content:
        return None
    if "README.md" in content:
        readme = api.hf_hub_download(repo_id, "README.md", repo_type="model")
        tags = ModelCard.load(readme, ignore_metadata_errors=True).data.to_dict().get("tags") or []
        if MODEL_CARD_TAG in tags:
            return None
    return sorted(content)


def check_push_access(repo_id: str, token: Optional[str] = None, endpoint: Optional[str] = None,
                      repo_type: str = "model") -> str:
    """Check, before any work, that a push to ``repo_id`` can succeed: a token exists and the Hub accepts it.

    One ``whoami`` request, no retries: a missing token, an unreachable endpoint or a rejected token
    fails in seconds, before a training run or a dataset build spends hours.

    Args:
        repo_id: ``ORG/NAME``.
        token: A Hub token; None uses the saved login / ``HF_TOKEN``.
        endpoint: The Hub endpoint (default: ``HF_ENDPOINT`` or huggingface.co).
        repo_type: ``"model"`` or ``"dataset"`` (named in messages).

    Returns:
        The user name the token belongs to.

    Raises:
        ValueError: ``repo_id`` is not ``ORG/NAME``.
        HubPushError: no token, the Hub unreachable, or the token rejected.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"the Hub {repo_type} repo must be 'ORG/NAME', got {repo_id!r}")
    token = token or get_token()
    if not token:
        raise HubPushError(f"no Hugging Face token to push the {repo_type} {repo_id!r}: log in with "
                           "`hf auth login` or set HF_TOKEN (checked before any work was done)")
    api = HfApi(endpoint=endpoint, token=token, library_name="spl_losses")
    try:
        info = api.whoami(token=token)
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status in (401, 403):
            raise HubPushError(f"the Hub at {api.endpoint} rejected the token (HTTP {status}); cannot push the "
                               f"{repo_type} {repo_id!r} (checked before any work was done)") from err
        raise HubPushError(f"the Hub at {api.endpoint} answered HTTP {status} to a token check; cannot push the "
                           f"{repo_type} {repo_id!r}: {err}") from err
    except Exception as err:
        if _is_network_error(err):
            raise HubPushError(f"could not reach the Hub at {api.endpoint} ({type(err).__name__}: {err}) to push "
                               f"the {repo_type} {repo_id!r}: check the network or HF_ENDPOINT (checked before "
                               "any work was done)") from err
        raise
    return str(info.get("name", "")) if isinstance(info, dict) else ""


def push_run_to_hub(
        run_dir: PathLike,
        repo_id: str,
        token: Optional[str] = None,
        private: bool = False,
        *,
        commit_message: Optional[str] = None,
        overwrite: bool = False,
        license: Optional[str] = None,
        endpoint: Optional[str] = None,
) -> str:
    """Write the model card of a run and upload its ``model/`` folder to the Hub.

    The card (``model/README.md``) and the training record (``model/training_config.yaml``,
    ``model/training_results.json``) are written before anything is sent, so the local export is
    complete on disk whatever happens next.

    Args:
        run_dir: A run directory of ``recipes/train.py``.
        repo_id: ``ORG/NAME`` on the Hub (created if missing).
        token: A Hub token; None uses the saved login / ``HF_TOKEN``.
        private: Create the repo private (ignored when it exists).
        commit_message: The commit's message (default: names the loss and dataset).
        overwrite: Upload even when the repo already holds something this module did not publish.
        license: Optional license id for the card's metadata.
        endpoint: The Hub endpoint (default: ``HF_ENDPOINT`` or huggingface.co).

    Returns:
        The URL of the commit.

    Raises:
        ValueError: The run directory is incomplete or ``repo_id`` is not ``ORG/NAME``.
        HubPushError: No token, the Hub unreachable, the token rejected, or a repo with other content.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must be 'ORG/NAME', got {repo_id!r}")
    run = read_run(run_dir)
    write_model_card(run_dir, repo_id, license=license)
    write_training_record(run_dir)
    model_dir = run["model_dir"]
    where = f"The local export is complete at {str(model_dir)!r}; push it again with " \
            f"spl_losses.hub.push_run_to_hub({str(run_dir)!r}, {repo_id!r}) once fixed."

    token = token or get_token()
    if not token:
        raise HubPushError(f"no Hugging Face token: log in with `hf auth login`, set HF_TOKEN, or pass token=... "
                           f"to push to {repo_id!r}. {where}")
    api = HfApi(endpoint=endpoint, token=token, library_name="spl_losses")
    message = commit_message or f"Upload {run['results'].get('loss') or run['config'].get('loss') or 'spl_losses'} " \
                                f"model trained on {run['results'].get('dataset') or run['config'].get('dataset')}"
    try:
        # create first: a single request without retries, so an unreachable Hub fails fast
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if not overwrite:
            conflict = _remote_conflict(api, repo_id)
            if conflict:
                raise HubPushError(f"the Hub repo {repo_id!r} already exists and holds other content ({conflict}); "
                                   f"its model card has no {MODEL_CARD_TAG!r} tag, so it was not published by "
                                   f"spl_losses. Pick another name or pass overwrite=True. {where}")
        info = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(model_dir),
                                 commit_message=message, ignore_patterns=_IGNORE_PATTERNS)
    except HubPushError:
        raise
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status in (401, 403):
            raise HubPushError(f"the Hub at {api.endpoint} rejected the token (HTTP {status}) for {repo_id!r}: "
                               f"check that it is valid and has write access. {where}") from err
        raise HubPushError(f"the Hub at {api.endpoint} answered HTTP {status} while pushing {repo_id!r}: {err}. "
                           f"{where}") from err
    except Exception as err:
        if _is_network_error(err):
            raise HubPushError(f"could not reach the Hub at {api.endpoint} ({type(err).__name__}: {err}) "
                               f"while pushing {repo_id!r}: check the network or HF_ENDPOINT. {where}") from err
        raise
    return str(getattr(info, "commit_url", info))


# ---------------------------------------------------------------------------------------------- loss state
def save_loss_state(loss: nn.Module, path: PathLike) -> Optional[Path]:
    """Save the tensors of a loss's ``state_dict`` (ROLE estimator, LL-Cp / APL matrices, ...) in safetensors.

    Non-tensor state (the epoch, from ``get_extra_state``) goes into the file's metadata as JSON.

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
    if not tensors:
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
    save_file(tensors, str(path), metadata=metadata)
    return path


def _resolve_loss_state_file(source: PathLike, token: Optional[str]) -> str:
    source = str(source)
    if source.startswith(_HUB_PREFIX):
        from huggingface_hub import hf_hub_download

        return hf_hub_download(source[len(_HUB_PREFIX):], LOSS_STATE_FILENAME, token=token)
    if source.startswith(_LOCAL_PREFIX):
        source = source[len(_LOCAL_PREFIX):]
    path = Path(source)
    if path.is_dir():
        for candidate in (path / LOSS_STATE_FILENAME, path / "model" / LOSS_STATE_FILENAME):
            if candidate.is_file():
                return str(candidate)
        raise ValueError(f"no {LOSS_STATE_FILENAME} in {source!r} (nor in its model/ folder)")
    if not path.is_file():
        raise ValueError(f"loss state {source!r} not found: expected a .safetensors file, a run or model folder, "
                         f"or hf-hub:ORG/NAME")
    return str(path)


def load_loss_state(loss: nn.Module, source: PathLike, token: Optional[str] = None, strict: bool = True) -> nn.Module:
    """Load a state saved by :func:`save_loss_state` into a loss built with the same sizes.

    Files holding only tensors (e.g. written with ``safetensors.torch.save_file(loss.state_dict())``) load
    too; the loss then keeps its current non-tensor state (the epoch).

    Args:
        loss: The loss to load into (e.g. ``create_loss("role", num_classes=C, num_examples=N, ...)``).
        source: A ``.safetensors`` file, a run or model folder, or ``hf-hub:ORG/NAME``.
        token: Hub token for a private repo.
        strict: Require the saved and the loss's tensor keys to match exactly.

    Returns:
        ``loss``, with its state loaded.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not isinstance(loss, nn.Module):
        raise TypeError(f"loss must be an nn.Module, got {type(loss).__name__}")
    path = _resolve_loss_state_file(source, token)
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
    saved_name, own_name = metadata.get("loss_name", ""), getattr(loss, "loss_name", "") or ""
    if saved_name and own_name and saved_name != own_name:
        raise ValueError(f"the loss state in {path!r} was saved from loss {saved_name!r}, not {own_name!r}")
    state: Dict[str, Any] = dict(load_file(path))
    state.update(json.loads(metadata.get("extra_state") or "{}"))
    own = loss.state_dict()
    for key, value in own.items():  # files without extra state (tensors only) keep the loss's current one
        if key.endswith("_extra_state") and key not in state:
            state[key] = value
    mismatched = [f"{k}: saved {tuple(v.shape)}, expected {tuple(own[k].shape)}" for k, v in state.items()
                  if isinstance(v, torch.Tensor) and k in own and isinstance(own[k], torch.Tensor)
                  and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        raise ValueError(f"the loss state in {path!r} does not fit this loss (built for another dataset size or "
                         f"class count?): {mismatched}")
    try:
        loss.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        raise ValueError(f"the loss state in {path!r} does not fit this loss: {err}") from err
    return loss


# ---------------------------------------------------------------------------------------------- load
def read_model_config(checkpoint: PathLike, token: Optional[str] = None) -> Dict[str, Any]:
    """The config.json of an exported model (timm's ``save_for_hf`` or a LinearProbe's).

    Args:
        checkpoint: A run directory, its ``model/`` folder, ``local-dir:PATH`` or ``hf-hub:ORG/NAME``.
        token: Hub token for a private repo.

    Returns:
        The parsed config.json (a timm export has ``architecture``, ``num_classes``, ``pretrained_cfg``,
        ``label_names`` and, for a BoostLU run, ``boostlu_alpha``).
    """
    checkpoint = str(checkpoint)
    if checkpoint.startswith(_HUB_PREFIX):
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(checkpoint[len(_HUB_PREFIX):], "config.json", token=token)
    else:
        if checkpoint.startswith(_LOCAL_PREFIX):
            checkpoint = checkpoint[len(_LOCAL_PREFIX):]
        path = _model_dir(Path(checkpoint)) / "config.json"
        if not path.is_file():
            raise ValueError(f"no exported model at {checkpoint!r}: expected a run directory, a model folder with "
                             "config.json, local-dir:PATH or hf-hub:ORG/NAME")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if not isinstance(config, dict):
        raise ValueError(f"config.json of {checkpoint!r} must hold a mapping, got {type(config).__name__}")
    return config


def has_loss_state(checkpoint: PathLike, token: Optional[str] = None) -> bool:
    """Whether a checkpoint holds a ``loss_state.safetensors`` (loadable with :func:`load_loss_state`).

    Args:
        checkpoint: A run directory, a model folder, ``local-dir:PATH`` or ``hf-hub:ORG/NAME``.
        token: Hub token for a private repo.
    """
    checkpoint = str(checkpoint)
    if checkpoint.startswith(_HUB_PREFIX):
        from huggingface_hub import file_exists

        return file_exists(checkpoint[len(_HUB_PREFIX):], LOSS_STATE_FILENAME, token=token)
    try:
        _resolve_loss_state_file(checkpoint, token)
    except ValueError:
        return False
    return True


def load_exported_model(checkpoint: PathLike, token: Optional[str] = None, apply_boostlu: bool = False) -> nn.Module:
    """Load an exported model: a timm model (``save_for_hf`` format) or a LinearProbe.

    Args:
        checkpoint: A run directory, its ``model/`` folder, ``local-dir:PATH`` or ``hf-hub:ORG/NAME``.
        token: Hub token for a private repo.
        apply_boostlu: When the checkpoint's config.json has ``boostlu_alpha`` (a BoostLU run: the stock
            timm model is saved, but its logits were BoostLU's when it was validated and tested), return
            ``spl_losses.models.BoostLU(model, alpha)``; otherwise the plain model (un-boosted logits).

    Returns:
        The model, in eval mode.
    """
    model = _load_exported_model(checkpoint, token)
    if apply_boostlu:
        alpha = read_model_config(checkpoint, token).get("boostlu_alpha")
        if alpha is not None:
            from .models import BoostLU

            model = BoostLU(model, alpha=float(alpha)).eval()
    return model


def _load_exported_model(checkpoint: PathLike, token: Optional[str] = None) -> nn.Module:
    import timm

    from .models.linear_probe import LinearProbe

    checkpoint = str(checkpoint)
    if checkpoint.startswith(_HUB_PREFIX):
        from huggingface_hub import hf_hub_download

        repo_id = checkpoint[len(_HUB_PREFIX):]
        with open(hf_hub_download(repo_id, "config.json", token=token), encoding="utf-8") as f:
            config = json.load(f)
        if _is_timm_export(config):
            model = timm.create_model(checkpoint, pretrained=True)
        else:
            model = LinearProbe.from_pretrained(repo_id, token=token)
        return model.eval()
    if checkpoint.startswith(_LOCAL_PREFIX):
        checkpoint = checkpoint[len(_LOCAL_PREFIX):]
    model_dir = _model_dir(Path(checkpoint))
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"no exported model at {checkpoint!r}: expected a run directory, a model folder with "
                         "config.json, local-dir:PATH or hf-hub:ORG/NAME")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    if _is_timm_export(config):
        model = timm.create_model(f"{_LOCAL_PREFIX}{model_dir}", pretrained=True)
    elif {"in_features", "num_classes"} <= set(config):
        model = LinearProbe.from_pretrained(str(model_dir))
    else:
        raise ValueError(f"{str(config_path)!r} is neither a timm export (no 'architecture') nor a LinearProbe "
                         "config (no 'in_features' / 'num_classes')")
    return model.eval()
