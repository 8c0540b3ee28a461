"""The model card and the training record of a run of ``recipes/train.py``.

:func:`build_model_card` makes the card from the run's ``config.yaml`` and ``results.json``: what was
trained (backbone, loss, train mode, dataset and its single-positive seed, hyperparameters), the
results as ``model-index`` metadata (mAP on validation and test in both conventions), the method's
citation and a usage snippet. :func:`write_training_record` writes the run's config and results beside
the model, so a published repo records how it was trained.

Both publish only :func:`~spl_losses.hub.public.public_training_config` of the run's files: credentials
masked, absolute local paths reduced to ``<local>/NAME``. The card's body is escaped: a value that is not
a plain name (a hostile class, dataset or model name with ``|``, backticks, newlines or HTML) is written
as HTML-escaped text, table cells escape ``|``, and every code block's fence is longer than any run of
backticks inside it, so no value can break a table or a code block or put raw HTML in the card.
"""
import json
import math
import os
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from ..checkpoints import LOSS_STATE_FILENAME, TRAINING_CONFIG_FILENAME, TRAINING_RESULTS_FILENAME
from .markdown import code as _code, fenced as _fenced, hub_id as _hub_id, text as _text
from .public import public_training_config

__all__ = ["MODEL_CARD_TAG", "read_run", "build_model_card", "write_model_card", "write_training_record"]

#: Tag of every model card this package writes: a repo whose card has it is "ours" and may be updated.
MODEL_CARD_TAG = "spl_losses"
PathLike = Union[str, os.PathLike]
_DATASET_NAMES = {"voc2012": "PASCAL VOC 2012", "coco2014": "MS-COCO 2014", "nuswide": "NUS-WIDE",
                  "cub200": "CUB-200-2011"}


def citations_for_run(loss: Optional[str], boostlu: bool = False) -> List[str]:
    """BibTeX entries to cite for a run: the method's paper (the loss class's ``citation``), BoostLU's when
    used, and Cole et al. (the benchmark) last.

    Args:
        loss: The loss's registry name.
        boostlu: Whether the run used BoostLU.
    """
    from .._registry import get_loss_class, is_loss
    from ..losses._citations import COLE_2021
    from ..models import BoostLU

    entries = []
    for entry in (getattr(get_loss_class(loss), "citation", None) if loss and is_loss(loss) else None,
                  BoostLU.citation if boostlu else None, COLE_2021):
        if entry and entry not in entries:
            entries.append(entry)
    return entries


def read_run(run_dir: PathLike) -> Dict[str, Any]:
    """Read and check a run directory of ``recipes/train.py``.

    Args:
        run_dir: The ``--output-dir`` of a training run.

    Returns:
        ``{"config": dict, "results": dict, "model_dir": Path, "model_config": dict}``.
    """
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


#: Labels a run trained on that were not simulated by the package: (task name, card sentence, table row).
_OBSERVED_KINDS = {
    "given": ("partial labels",
              "from **given partial labels**: the observed labels the dataset gives for each training image "
              "(positives, and explicit negatives where it has them), every other class unobserved",
              "given partial labels (the dataset's own, not simulated)"),
    "stored": ("observed labels",
               "from the **observed labels stored with the dataset** (its full labels kept for evaluation; how "
               "the observed labels were chosen is not recorded), every other class unobserved",
               "observed labels stored with the dataset (origin not recorded)"),
}


def _labels_kind(results: Dict[str, Any], seed) -> Dict[str, str]:
    """What the card says of the training labels, from results.json's ``labels`` entry (runs recorded before it
    trained on simulated single positives): a short name, a sentence, the table rows."""
    labels = results.get("labels") if isinstance(results.get("labels"), dict) else {}
    positives, negatives = _number(labels.get("positives_per_image")), _number(labels.get("negatives_per_image"))
    counts = (f"{positives:.2f} observed positive(s) and {negatives:.2f} observed negative(s) per training image"
              if positives is not None and negatives is not None else None)
    if labels.get("kind") in _OBSERVED_KINDS:
        task, text, row = _OBSERVED_KINDS[labels["kind"]]
        rows = [("Training labels", row)] + ([("Observed labels per image", counts)] if counts else [])
        return {"task": task, "sentence": text + (f"; on average {counts}" if counts else "") + ".", "rows": rows}
    rule = labels.get("rule") or "uniform"
    sentence = ("from **single positive labels** simulated from full labels: each training image carries one "
                f"positive label (drawn by the {_code(rule)} rule, seed {_text(seed) if seed is not None else 'unknown'}), "
                "every other class is unobserved.")
    rows = [("Training labels", f"simulated single positives (rule {_code(rule)})"),
            ("Single-positive seed", _text(seed) if seed is not None else "unknown")]
    return {"task": "single positive labels", "sentence": sentence, "rows": rows}


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

    config, results = public_training_config(config), public_training_config(results)
    model_config = model_config or {}
    timm_export = _is_timm_export(model_config)
    dataset = str(results.get("dataset") or config.get("dataset") or "unknown")
    model = str(results.get("model") or config.get("model") or model_config.get("architecture") or "unknown")
    loss = str(results.get("loss") or config.get("loss") or "unknown")
    train_mode = str(results.get("train_mode") or config.get("train_mode") or "unknown")
    seed = results.get("observed_seed", config.get("observed_seed"))
    dataset_name = _DATASET_NAMES.get(dataset, dataset)
    name = repo_id.split("/")[-1]

    kind = _labels_kind(results, seed)
    given = kind["task"] != "single positive labels"
    dataset_args = {"single_positive_seed": seed} if seed is not None and not given else None
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
                task_type="image-classification", task_name=f"Multi-label image classification ({kind['task']})",
                dataset_type=dataset, dataset_name=dataset_name, dataset_split=split, dataset_args=dataset_args,
                metric_type=metric_type, metric_name=metric_name, metric_value=round(value, 4)))

    tags = ["image-classification", "multi-label-classification",
            "partial-label-multi-label" if kind["task"] == "partial labels" else "single-positive-multi-label", MODEL_CARD_TAG, f"loss-{loss}"]
    if timm_export:
        tags.insert(1, "timm")
    card_data = ModelCardData(
        library_name="timm" if timm_export else "spl_losses",
        pipeline_tag="image-classification" if timm_export else None,
        license=license,
        tags=tags,
        datasets=[dataset] if _hub_id(dataset) else None,
        metrics=["map"],
        model_name=name,
        eval_results=eval_results or None,
    )

    label_names = model_config.get("label_names") or results.get("label_names") or []
    lines = [f"# {_text(name)}", ""]
    what = _code(model) + (" (timm)" if timm_export else " (a linear probe on fixed features)")
    lines += [f"{what} trained for multi-label classification of **{_text(dataset_name)}** ({len(label_names)} "
              f"classes) {kind['sentence']} Trained with the {_code(loss)} loss of the `spl_losses` package "
              f"in the {_code(train_mode)} mode.", ""]
    lines += ["## Training", "", "| | |", "|---|---|",
              f"| Backbone | {_code(model)} |", f"| Loss | {_code(loss)} |", f"| Train mode | {_code(train_mode)} |",
              f"| Dataset | {_code(dataset)} |"]
    lines += [f"| {name} | {value} |" for name, value in kind["rows"]]
    if "best_epoch" in results:
        lines.append(f"| Best epoch (by validation mAP) | {_text(results['best_epoch'])} |")
    if config.get("val_set_variant"):
        lines.append(f"| Validation labels | {_code(config['val_set_variant'])} |")
    lines += ["", "All resolved training arguments:", ""]
    lines += _fenced(yaml.safe_dump(config, sort_keys=True, default_flow_style=False).rstrip().split("\n"), "yaml")
    lines += [""]

    lines += ["## Results", "", "mAP in percent, against the full labels. Two conventions: *AP 0* counts a class "
              "without positives in the evaluated split as AP 0 (the reference of Cole et al.); "
              "*skip* leaves such classes out.", "",
              "| Split | mAP (AP 0) | mAP (skip) |", "|---|---|---|"]
    for split, prefix in (("validation", "val"), ("test", "test")):
        zero, skip = _number(results.get(f"{prefix}_map")), _number(results.get(f"{prefix}_map_skip_empty"))
        lines.append(f"| {split} | {'-' if zero is None else f'{zero:.2f}'} | {'-' if skip is None else f'{skip:.2f}'} |")
    if results.get("test_map") is None and results.get("test_note"):
        lines += ["", f"No test metrics: {_text(results['test_note'])}."]
    test_metrics = results.get("test_metrics") or {}
    others = {k: v for k, v in test_metrics.items() if k not in ("map", "map_skip_empty") and _number(v) is not None}
    if others:
        lines += ["", "Other test metrics (percent): " + ", ".join(f"{_text(k)} {float(v):.2f}"
                                                                 for k, v in others.items())]
    lines.append("")

    lines += ["## Usage", ""]
    size = config.get("image_size") or (model_config.get("pretrained_cfg") or {}).get("input_size", [3, 224, 224])[-1]
    alpha = model_config.get("boostlu_alpha")
    size = " ".join(str(size).split())
    if timm_export:
        code = ["import timm, torch", "from PIL import Image"]
        if alpha is not None:
            code += ["from spl_losses.models import BoostLU"]
        code += ["", f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()']
        if alpha is not None:
            code += [f"# trained and scored with BoostLU (alpha {alpha}): plain timm gives the un-boosted logits",
                     f"model = BoostLU(model, alpha={alpha}).eval()"]
        code += [f"# the training preprocessing, recorded in config.json: squash to {size}x{size} (no crop), "
                 "the model's normalisation",
                 "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))",
                 'label_names = model.pretrained_cfg["label_names"]',
                 "with torch.no_grad():",
                 '    probs = torch.sigmoid(model(transform(Image.open("image.jpg").convert("RGB")).unsqueeze(0)))[0]',
                 "print({label_names[i]: round(float(p), 3) for i, p in enumerate(probs) if p > 0.5})"]
        lines += _fenced(code, "python") + [""]
        if alpha is not None:
            lines += [f"This model was trained with BoostLU (alpha {_text(alpha)}) and the results above were measured "
                      "with it. The weights are those of the stock timm model, so "
                      "`timm.create_model` alone loads it and gives the **un-boosted** logits; wrap it in "
                      "`spl_losses.models.BoostLU` as above to reproduce the reported mAP "
                      "(`recipes/evaluate.py` does so).", ""]
    else:
        lines += _fenced(["import torch", "from spl_losses.models import LinearProbe", "",
                          f'probe = LinearProbe.from_pretrained("{repo_id}").eval()',
                          "# probe.backbone and probe.preprocessing say how to compute the (B, in_features) features",
                          "probs = torch.sigmoid(probe(features))"], "python") + [""]
    shell_dataset, shell_loss = shlex.quote(" ".join(dataset.split())), shlex.quote(" ".join(loss.split()))
    lines += ["Evaluate or continue training with spl_losses:", ""]
    lines += _fenced([
        f"python recipes/evaluate.py --checkpoint hf-hub:{repo_id} --dataset {shell_dataset} --split test",
        f"python recipes/train.py --model hf-hub:{repo_id} --dataset {shell_dataset} --loss {shell_loss} ..."],
        "bash") + [""]
    citations = "\n\n".join(citations_for_run(loss, boostlu=bool(config.get("boostlu"))))
    lines += ["## Citation", ""] + _fenced(citations.split("\n"), "bibtex") + [""]
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
    """Write the run's config.yaml and results.json into ``model/`` as ``training_config.yaml`` and
    ``training_results.json``, so the published repo records how it was trained (machine-readable; e.g.
    ``recipes/evaluate.py`` reads the training image size from it). What is written is
    :func:`~spl_losses.hub.public.public_training_config` of each: no credentials, no absolute local paths.

    Args:
        run_dir: A run directory of ``recipes/train.py``.

    Returns:
        The two files written.
    """
    run = read_run(run_dir)
    model_dir = run["model_dir"]
    config_path, results_path = model_dir / TRAINING_CONFIG_FILENAME, model_dir / TRAINING_RESULTS_FILENAME
    config_path.write_text(yaml.safe_dump(public_training_config(run["config"]), sort_keys=False,
                                          default_flow_style=False), encoding="utf-8")
    results_path.write_text(json.dumps(public_training_config(run["results"]), indent=2), encoding="utf-8")
    written = [config_path, results_path]
    return written
