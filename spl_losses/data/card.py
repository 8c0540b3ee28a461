"""Dataset cards (``huggingface_hub.DatasetCard``) for built SPML datasets.

A card states the classes, split sizes, how the single positives were drawn (rule, seeds), what the
build dropped, the source's licence and citation, and how to load the dataset back.
"""
import os
from typing import Any, Dict, Optional

import datasets
from huggingface_hub import DatasetCard, DatasetCardData

from ..hub.markdown import code as md_code, fenced, text as md_text
from .registry import get_dataset_class, is_dataset

__all__ = ["make_dataset_card", "merge_card_metadata", "size_category"]

_RULES = {
    "uniform": "one positive is chosen uniformly at random among its true positives (Cole et al., CVPR 2021)",
    "size": ("one positive is drawn among its true positives with probability proportional to the class's share "
             "of the image's annotated object area (the size bias of Arroyo, Perona & Cole, \"Understanding Label "
             "Bias in Single Positive Multi-Label Learning\", ICLR 2023 Tiny Papers)"),
    "loc": ("one positive is drawn among its true positives with probability proportional to the sum, over the "
            "class's boxes, of 1 / (distance from the box centre to the image centre), a distance of 0 counting "
            "as 0.0005 (the location bias of Arroyo, Perona & Cole, ICLR 2023 Tiny Papers)"),
    "weights": ("one positive is drawn among its true positives with probability proportional to a fixed "
                "per-class weight ({class_weights_file})"),
}
_HASH_DRAWS = (
    "The draw of row `r` uses the SplitMix64 key `mix(mix(mix(mix(seed) + salt) + r) + c)` of each positive `c` "
    "(`spl_losses.data.sample_single_positive`; salt 2 for train, 4 for validation, 6 for test): the smallest "
    "key wins{weighted}. The keys are a pure function of integers, so the draws are identical on every machine "
    "and library version. Validation is {val_pct}% of the official training set (the rows with the smallest "
    "keys for seed {split_seed}, kept in sorted order); the official validation/test set is `test`.")
_REFERENCE_DRAWS = (
    "The draws reproduce the reference code's own random streams, draw for draw (`sampling_rng=reference`): "
    "{stream}, one stream per official split, rows in the reference's order. Validation is {val_pct}% of the "
    "official training set: `numpy.random.RandomState({split_seed}).permutation`, the last "
    "`round({val_fraction} N)` indices, sorted; validation rows keep the draws of the official training set.")
_TEST_DRAWS = "Test rows carry a draw too, for \"observed\" evaluation only: report test metrics against `labels`."


def _sampling_text(report: Dict[str, Any]) -> str:
    """The card's paragraph on how the observed labels and the validation split were drawn."""
    rule = report.get("observed_sampling", "uniform")
    val_fraction = float(report.get("val_fraction", 0.2))
    fields = {"val_pct": int(round(100 * val_fraction)), "val_fraction": val_fraction,
              "split_seed": report.get("split_seed", 1200)}
    template = _RULES.get(rule)
    text = "For every image " + (template.format(
        class_weights_file=md_code(os.path.basename(str(report.get("class_weights_file")))))
        if template else md_code(rule)) + ". "
    if report.get("sampling_rng") == "reference":
        stream = ("`numpy.random.RandomState(seed)`, each row's positives then negatives shuffled (Cole et al.)"
                  if rule == "uniform" else
                  "`random.seed(seed)` then `random.choices` over the weights (Arroyo et al.)")
        text += _REFERENCE_DRAWS.format(stream=stream, **fields)
    else:
        weighted = (", after dividing `-log(1 - u)` by the weight, `u` the key mapped to [0, 1) (an exponential "
                    "race: P(c) = w_c / sum w)") if rule != "uniform" else ""
        text += _HASH_DRAWS.format(weighted=weighted, **fields)
    return text + " " + _TEST_DRAWS


def _given_text(report: Dict[str, Any]) -> list:
    """The card's lines on observed labels given by the source (partial labels), where any split has them."""
    splits = report.get("splits") or {}
    given = [s for s, r in splits.items() if isinstance(r, dict) and r.get("observed_labels") == "given"]
    if not given:
        return []
    without = [s for s, r in splits.items() if isinstance(r, dict) and r.get("full_labels") is False]
    text = (f"Observed labels given by the source for {', '.join(md_code(s) for s in given)}: partial labels as "
            "the user has them (observed positives in `observed_labels`, explicit negatives in "
            "`observed_negatives`), not drawn; the rule below applies to the other splits only.")
    if without:
        text += (f" No full labels in {', '.join(md_code(s) for s in without)} (`labels` is null there): no clean "
                 "metrics on those splits.")
    return [text, ""]


def size_category(num_examples: int) -> str:
    """The Hub's ``size_categories`` tag for a row count.

    Args:
        num_examples: Total number of rows.
    """
    for bound, tag in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                       (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if num_examples < bound:
            return tag
    return "10M<n<100M"


def _images_stored_by_path(ds: datasets.Dataset) -> bool:
    """Whether the first row's image is a file reference rather than embedded bytes."""
    if len(ds) == 0:
        return False
    first = ds.data.column("image")[0].as_py()
    return bool(first) and first.get("bytes") is None


def _class_facts(name: Optional[str]) -> Dict[str, Any]:
    if name is None or not is_dataset(name):
        return {}
    cls = get_dataset_class(name)
    return {
        "description": cls.source_description,
        "license": cls.source_license,
        "citation": cls.source_citation,
        "homepage": cls.source_homepage,
        "class_list_note": cls.class_list_note,
        "expected_num_pos": cls.expected_num_pos,
    }


def make_dataset_card(
        dataset_dict: datasets.DatasetDict,
        name: Optional[str] = None,
        report: Optional[Dict[str, Any]] = None,
        repo_id: Optional[str] = None,
        pretty_name: Optional[str] = None,
        license: Optional[str] = None,
        citation: Optional[str] = None,
        local_load: Optional[str] = None,
) -> DatasetCard:
    """Write the dataset card of a built SPML dataset.

    Args:
        dataset_dict: The built ``DatasetDict`` (splits train/validation/test).
        name: Registered builder name (source description, licence, citation and k come from it).
        report: The builder's ``build_report`` (seeds, dropped images); None if unknown.
        repo_id: Hub id used in the loading snippet (``ORG/NAME``); a placeholder if None.
        pretty_name: Human name; defaults to ``name``.
        license: Overrides the builder's licence (a Hub licence id).
        citation: Overrides the builder's BibTeX.
        local_load: A Python expression loading a local copy (``datasets.load_from_disk("out")``), shown
            in the loading snippet.

    Returns:
        A ``huggingface_hub.DatasetCard`` (``card.save(path)``, ``card.push_to_hub(repo_id)``).
    """
    if not isinstance(dataset_dict, datasets.DatasetDict):
        raise TypeError(f"dataset_dict must be a datasets.DatasetDict, got {type(dataset_dict).__name__}")
    if "train" not in dataset_dict or "labels" not in dataset_dict["train"].column_names:
        raise ValueError(f"expected a 'train' split with a 'labels' column, got splits {list(dataset_dict)}")
    facts = _class_facts(name)
    report = report or {}
    license = license or facts.get("license") or "unknown"
    citation = citation if citation is not None else facts.get("citation", "")
    title = pretty_name or (f"{name} (single-positive labels)" if name else "Single-positive multi-label dataset")
    class_names = dataset_dict["train"].features["labels"].feature.names
    input_column = "image" if "image" in dataset_dict["train"].column_names else "features"
    total = sum(len(ds) for ds in dataset_dict.values())

    card_data = DatasetCardData(
        license=license,
        pretty_name=title,
        size_categories=size_category(total),
        task_categories=["image-classification"],
        tags=["multi-label", "single-positive-labels", "spml", "partial-labels"],
    )
    split_rows = []
    for split, ds in dataset_dict.items():
        entry = report.get("splits", {}).get(split, {})
        dropped = entry.get("dropped_without_positive", "?") if report else "?"
        kept = entry.get("kept_without_positive", "?") if report else "?"
        split_rows.append(f"| {md_text(split)} | {len(ds):,} | {md_text(dropped)} | {md_text(kept)} |")
    seed = report.get("seed", "not recorded")
    k = facts.get("expected_num_pos")
    load_id = repo_id or "ORG/NAME"
    classes = ", ".join(md_code(c) for c in class_names)
    body = [
        f"# {md_text(title)}",
        "",
        facts.get("description") or "A multi-label dataset with single-positive (SPML) annotations.",
        "",
        "Built with `spl_losses`"
        + (f" (`python -m spl_losses.data build {name}`)" if name else "") + ".",
        "",
        "## Columns",
        "",
        f"- `{input_column}`: " + ("the image (decoded as RGB)." if input_column == "image"
                                   else "a pre-extracted feature vector (float32)."),
        "- `labels`: all positive classes of the example (class indices into the names below).",
        "- `observed_labels`: the single observed positive (one class index); every other class is unobserved.",
        "- `index`: the row's position in its split (for losses with per-example state such as ROLE).",
        "",
        f"## Classes ({len(class_names)})",
        "",
        (f"Class list: {facts['class_list_note']}." if facts.get("class_list_note") else ""),
        "",
        classes,
        "",
        "## Splits",
        "",
        "| split | examples | dropped (no positive label) | kept without a positive label |",
        "|---|---|---|---|",
        *split_rows,
        "",
        ("Examples without any positive label are dropped, as in the reference protocol (Cole et al., CVPR 2021)."
         if report.get("drop_without_positive", True) else
         "Examples without any positive label are kept, with an all-zero label row and no observed positive, "
         "as in the reference protocol for this dataset (Cole et al., CVPR 2021)."),
        "",
        "## Single-positive labels",
        "",
        *_given_text(report),
        f"Seed: {seed}. Observed positives per example: {report.get('num_positives', 1)}."
        + (f" Observed negatives per example: {report['num_negatives']}." if report.get("num_negatives") else "")
        + f" Rule (`observed_sampling`): `{report.get('observed_sampling', 'uniform')}`; random stream "
          f"(`sampling_rng`): `{report.get('sampling_rng', 'hash')}`.",
        "",
        _sampling_text(report),
        "",
    ]
    if k is not None:
        body += [f"Expected positives per image (k for EPR/ROLE): {k}.", ""]
    body += [
        "## Loading",
        "",
        *fenced([
            "import datasets",
            *([f"ds = {local_load}  # this local copy"] if local_load else []),
            f'ds = datasets.load_dataset("{load_id}")' + ("" if repo_id else "  # once pushed to the Hub"),
            'names = ds["train"].features["labels"].feature.names',
            "",
            "# or, checked against the SPML data contract:",
            "from spl_losses.data import load_spml_dataset",
            f'ds = load_spml_dataset("{load_id}")  # also a local save_to_disk folder',
            "",
            "# dense targets for a loss: 1 = observed positive, 0 = unobserved",
            "from spl_losses.labels import indices_to_dense",
            'targets = indices_to_dense(ds["train"]["observed_labels"], len(names))',
        ], "python"),
        "",
    ]
    if input_column == "image" and _images_stored_by_path(dataset_dict["train"]):
        body += ["A local `save_to_disk` copy references the image files by path (they must stay where they "
                 "are); Parquet files written by the command line and `push_to_hub` embed them.", ""]
    body += ["## Licence", "", f"Source data licence: {md_code(license)}"
             + (f" (see {facts['homepage']})." if facts.get("homepage") else "."), ""]
    if citation:
        body += ["## Citation", "", *fenced(citation.strip().split("\n"), "bibtex"), ""]
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(body)
    return DatasetCard(content)


def merge_card_metadata(card: DatasetCard, existing: DatasetCard) -> DatasetCard:
    """Keep the metadata ``datasets`` wrote on the Hub (``dataset_info``, ``configs``) in our card.

    Args:
        card: The card from :func:`make_dataset_card`.
        existing: The card currently on the Hub (``DatasetCard.load(repo_id)``).

    Returns:
        ``card``, with the keys it lacks copied from ``existing``'s metadata.
    """
    ours = card.data.to_dict()
    for key, value in existing.data.to_dict().items():
        if key not in ours:
            card.data[key] = value
    return card
