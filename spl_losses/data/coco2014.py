"""COCO 2014 as an SPML benchmark (80 classes, Cole et al., CVPR 2021).

Raw layout under ``root`` (the official ``annotations_trainval2014.zip``, ``train2014.zip`` and
``val2014.zip`` of https://cocodataset.org/#download, unpacked; ``spl-data download coco2014 --data-dir
ROOT`` fetches, checks (size, SHA-256) and unpacks them)::

    annotations/instances_train2014.json
    annotations/instances_val2014.json
    train2014/COCO_train2014_000000000009.jpg ...
    val2014/COCO_val2014_000000000042.jpg ...

Rules of the reference (Cole et al.): classes in the order of the ``categories`` list; an image is
present in a class if it has at least one instance annotation of it; images with no instance
annotation are dropped; rows are ordered by image id compared as strings (the reference sorts this
way, and the validation split drawn from the training rows depends on the order), the row order of the
reference's formatted label matrix, so ``sampling_rng="reference"`` reproduces its draws. File names
must name files inside ``train2014/`` / ``val2014/`` (one that leaves the folder is refused).

``observed_sampling="size"`` or ``"loc"`` draws the observed positive by the objects' area or
centrality (:mod:`spl_losses.data.coco_bias`); only then are the annotations' ``area``, ``bbox`` and
the images' ``width`` / ``height`` read, so the default path parses as little as before.
"""
import gc
import json
import os
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json

from .builder import SPMLBuilder
from .coco_bias import GEOMETRY_RULES, annotation_weights, entry_weights
from .image_checks import join_inside
from .raw_files import RawSplit, check_images_exist, index_lists, require_dir, require_file
from .registry import register_dataset

__all__ = ["COCO2014", "CocoColumns", "read_coco_split", "read_coco_columns", "coco_columns", "coco_label_matrix",
           "load_annotation_file", "COCO_SPLITS"]

#: Our split name -> the official split it is read from.
COCO_SPLITS = {"train": "train2014", "test": "val2014"}

_COCO_CITATION = """@inproceedings{lin2014microsoft,
  title = {Microsoft {COCO}: Common Objects in Context},
  author = {Lin, Tsung-Yi and Maire, Michael and Belongie, Serge and Hays, James and Perona, Pietro and
            Ramanan, Deva and Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  booktitle = {European Conference on Computer Vision (ECCV)},
  pages = {740--755},
  year = {2014}
}"""


class CocoColumns(NamedTuple):
    """The parts of a COCO instances file that the labels (and the biased draws) need, as columns.

    Args:
        category_names: Names in ``categories`` order.
        category_ids: (C,) int64 ids in ``categories`` order.
        image_ids: (I,) int64 ``images[].id``.
        file_names: (I,) object ``images[].file_name``.
        ann_image_ids: (A,) int64 ``annotations[].image_id``.
        ann_category_ids: (A,) int64 ``annotations[].category_id``.
        image_sizes: (I, 2) float64 ``images[].width, height``; only read with ``geometry=True``.
        ann_areas: (A,) float64 ``annotations[].area``; only with ``geometry=True``.
        ann_boxes: (A, 4) float64 ``annotations[].bbox``; only with ``geometry=True``.
    """

    category_names: List[str]
    category_ids: np.ndarray
    image_ids: np.ndarray
    file_names: np.ndarray
    ann_image_ids: np.ndarray
    ann_category_ids: np.ndarray
    image_sizes: Optional[np.ndarray] = None
    ann_areas: Optional[np.ndarray] = None
    ann_boxes: Optional[np.ndarray] = None


def _boxes(boxes: Sequence, annotation_file: str) -> np.ndarray:
    lengths = np.fromiter((len(b) if isinstance(b, (list, tuple)) else -1 for b in boxes), dtype=np.int64,
                          count=len(boxes))
    if (lengths != 4).any():
        i = int(np.flatnonzero(lengths != 4)[0])
        raise ValueError(f"{annotation_file}: annotations[{i}] has bbox {boxes[i]!r}; expected [x, y, width, height]")
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def coco_columns(annotations: dict, annotation_file: str = "<annotations>", geometry: bool = False) -> CocoColumns:
    """Extract :class:`CocoColumns` from a parsed instances file.

    Args:
        annotations: The parsed ``instances_*.json`` (keys ``images``, ``annotations``, ``categories``).
        annotation_file: File name used in error messages.
        geometry: Also read the images' sizes and the annotations' areas and boxes.
    """
    for key in ("images", "annotations", "categories"):
        if key not in annotations:
            raise ValueError(f"{annotation_file!r} is not a COCO instances file: no {key!r} key")
    try:
        categories, images, anns = annotations["categories"], annotations["images"], annotations["annotations"]
        columns = CocoColumns(
            category_names=[str(c["name"]) for c in categories],
            category_ids=np.array([int(c["id"]) for c in categories], dtype=np.int64),
            image_ids=np.fromiter((im["id"] for im in images), dtype=np.int64, count=len(images)),
            file_names=np.array([im["file_name"] for im in images], dtype=object),
            ann_image_ids=np.fromiter((a["image_id"] for a in anns), dtype=np.int64, count=len(anns)),
            ann_category_ids=np.fromiter((a["category_id"] for a in anns), dtype=np.int64, count=len(anns)),
        )
        if not geometry:
            return columns
        return columns._replace(
            image_sizes=np.array([[float(im["width"]), float(im["height"])] for im in images],
                                 dtype=np.float64).reshape(-1, 2),
            ann_areas=np.fromiter((float(a["area"]) for a in anns), dtype=np.float64, count=len(anns)),
            ann_boxes=_boxes([a["bbox"] for a in anns], annotation_file),
        )
    except (KeyError, TypeError, ValueError) as err:
        if str(err).startswith(annotation_file):
            raise
        raise ValueError(f"{annotation_file!r} is not a COCO instances file: an entry lacks or mistypes "
                         f"{err}") from None


_IMAGE_FIELDS = [("id", pa.int64()), ("file_name", pa.string())]
_ANNOTATION_FIELDS = [("image_id", pa.int64()), ("category_id", pa.int64())]
_GEOMETRY_IMAGE_FIELDS = [("width", pa.float64()), ("height", pa.float64())]
_GEOMETRY_ANNOTATION_FIELDS = [("area", pa.float64()), ("bbox", pa.list_(pa.float64()))]


def _arrow_schema(geometry: bool) -> pa.Schema:
    images = _IMAGE_FIELDS + (_GEOMETRY_IMAGE_FIELDS if geometry else [])
    anns = _ANNOTATION_FIELDS + (_GEOMETRY_ANNOTATION_FIELDS if geometry else [])
    return pa.schema([("images", pa.list_(pa.struct(images))), ("annotations", pa.list_(pa.struct(anns))),
                      ("categories", pa.list_(pa.struct([("id", pa.int64()), ("name", pa.string())])))])


def _numbers(values, name: str, dtype=np.int64) -> np.ndarray:
    return values.field(name).to_numpy(zero_copy_only=False).astype(dtype)


def _read_columns_arrow(path: str, geometry: bool) -> Optional[CocoColumns]:
    """Parse only the needed fields with pyarrow's JSON reader; None when the file does not fit its rules
    (more than one line, a missing or null field, a bbox that is not 4 numbers), so the caller falls
    back to the ``json`` module, whose errors are clearer."""
    schema = _arrow_schema(geometry)
    try:
        table = pa_json.read_json(
            path,
            read_options=pa_json.ReadOptions(block_size=os.path.getsize(path) + 1, use_threads=True),
            parse_options=pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
    except (pa.ArrowException, OverflowError):
        return None
    if table.num_rows != 1:
        return None
    lists = {}
    for key in ("images", "annotations", "categories"):
        column = table.column(key)
        if column.null_count:
            return None
        lists[key] = column.chunk(0).values if column.num_chunks == 1 else column.combine_chunks().values
        if any(lists[key].field(f.name).null_count for f in schema.field(key).type.value_type):
            return None
    images, anns, categories = lists["images"], lists["annotations"], lists["categories"]
    columns = CocoColumns(
        category_names=categories.field("name").to_pylist(),
        category_ids=_numbers(categories, "id"),
        image_ids=_numbers(images, "id"),
        file_names=np.array(images.field("file_name").to_pylist(), dtype=object),
        ann_image_ids=_numbers(anns, "image_id"),
        ann_category_ids=_numbers(anns, "category_id"),
    )
    if not geometry:
        return columns
    boxes = anns.field("bbox")
    if boxes.values.null_count or (boxes.value_lengths().to_numpy(zero_copy_only=False) != 4).any():
        return None
    return columns._replace(
        image_sizes=np.stack([_numbers(images, "width", np.float64), _numbers(images, "height", np.float64)], axis=1),
        ann_areas=_numbers(anns, "area", np.float64),
        ann_boxes=boxes.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, 4),
    )


def read_coco_columns(path: str, geometry: bool = False) -> CocoColumns:
    """Read the :class:`CocoColumns` of an instances file, fast.

    pyarrow's JSON reader parses only ``images[].{id, file_name}``, ``annotations[].{image_id,
    category_id}`` and ``categories[].{id, name}`` (skipping the polygons), about 5x faster than the
    ``json`` module on ``instances_train2014.json``. Files it cannot read that way (e.g. pretty-printed
    over several lines) are parsed with ``json`` with the garbage collector paused.

    Args:
        path: The ``instances_*.json`` file.
        geometry: Also read ``images[].{width, height}`` and ``annotations[].{area, bbox}`` (for
            ``observed_sampling="size"`` / ``"loc"``).
    """
    columns = _read_columns_arrow(path, geometry)
    if columns is None:
        columns = coco_columns(load_annotation_file(path), path, geometry=geometry)
    return columns


class _CocoRows(NamedTuple):
    """Rows of the label matrix: per row the listed image's position; per annotation its row and column."""

    image_positions: np.ndarray
    row_image_ids: np.ndarray
    ann_rows: np.ndarray
    ann_columns: np.ndarray


def _coco_rows(annotations: CocoColumns, annotation_file: str) -> _CocoRows:
    names, cat_ids = annotations.category_names, annotations.category_ids
    if not names:
        raise ValueError(f"{annotation_file!r} has an empty 'categories' list")
    if len(np.unique(cat_ids)) != len(cat_ids):
        raise ValueError(f"{annotation_file!r} lists a category id twice in 'categories'")
    ann_image, ann_cat = annotations.ann_image_ids, annotations.ann_category_ids

    # category id -> column, through a lookup table (COCO's ids are small ints, at most 90)
    lut = np.full(int(max(cat_ids.max(), ann_cat.max(initial=0))) + 1, -1, dtype=np.int64)
    lut[cat_ids] = np.arange(len(cat_ids))
    columns = lut[np.clip(ann_cat, 0, None)]
    unknown = (columns < 0) | (ann_cat < 0)
    if unknown.any():
        bad = int(ann_cat[unknown][0])
        raise ValueError(f"{annotation_file!r}: an annotation has category_id {bad}, which is not in 'categories'")

    # one row per listed image, ordered by the image id as a string (the reference's order)
    unique_ids, first = np.unique(annotations.image_ids, return_index=True)
    string_order = np.argsort(unique_ids.astype(str), kind="stable")
    row_ids = unique_ids[string_order]
    sorter = np.argsort(row_ids)
    pos = np.minimum(np.searchsorted(row_ids, ann_image, sorter=sorter), max(len(row_ids) - 1, 0))
    rows = sorter[pos] if len(row_ids) else pos
    listed = (row_ids[rows] == ann_image) if len(row_ids) else np.zeros(len(ann_image), dtype=bool)
    if not listed.all():
        bad = int(ann_image[~listed][0])
        raise ValueError(f"{annotation_file!r}: an annotation refers to image_id {bad}, which is not in 'images'")
    return _CocoRows(first[string_order], row_ids, rows, columns)


def coco_label_matrix(annotations, annotation_file: str = "<annotations>"):
    """Build the label matrix of one COCO instances file, vectorised over annotations.

    Args:
        annotations: The parsed ``instances_*.json`` (a dict with keys ``images``, ``annotations``,
            ``categories``) or its :class:`CocoColumns`.
        annotation_file: File name used in error messages.

    Returns:
        ``(class_names, category_ids, file_names, labels)``: the category names and ids in
        ``categories`` order, the ``file_name`` of every listed image (ordered by image id as a
        string) and the (N, 80) uint8 label matrix, with all-zero rows for images without any
        annotation (the builder drops them, as the reference does).
    """
    if not isinstance(annotations, CocoColumns):
        annotations = coco_columns(annotations, annotation_file)
    rows = _coco_rows(annotations, annotation_file)
    labels = np.zeros((len(rows.row_image_ids), len(annotations.category_names)), dtype=np.uint8)
    labels[rows.ann_rows, rows.ann_columns] = 1
    files = annotations.file_names[rows.image_positions].tolist()
    return annotations.category_names, annotations.category_ids, files, labels


def load_annotation_file(path: str) -> dict:
    """Parse a COCO JSON file with the garbage collector paused.

    Parsing creates millions of small containers, which makes the cyclic collector run over and over
    without freeing anything; pausing it halves the parse time of ``instances_train2014.json``.

    Args:
        path: The JSON file.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path!r} is not valid JSON: {err}") from None
    finally:
        if was_enabled:
            gc.enable()


def read_coco_split(root: str, official_split: str, check_images: bool = True,
                    observed_sampling: str = "uniform") -> Tuple[List[str], np.ndarray, RawSplit]:
    """Read one official COCO 2014 split.

    Args:
        root: Folder holding ``annotations/``, ``train2014/`` and ``val2014/``.
        official_split: ``"train2014"`` or ``"val2014"``.
        check_images: Check that every listed image file exists.
        observed_sampling: ``"size"`` or ``"loc"`` also computes the split's ``label_weights``
            (:mod:`spl_losses.data.coco_bias`); other values read no geometry.

    Returns:
        ``(class_names, category_ids, RawSplit)``; the split lists every image of the file, those
        without annotation with an empty label list.
    """
    annotation_file = require_file(
        os.path.join(root, "annotations", f"instances_{official_split}.json"), "COCO annotation file")
    geometry = observed_sampling in GEOMETRY_RULES
    columns = read_coco_columns(annotation_file, geometry=geometry)
    rows = _coco_rows(columns, annotation_file)
    num_rows, num_classes = len(rows.row_image_ids), len(columns.category_names)
    labels = np.zeros((num_rows, num_classes), dtype=np.uint8)
    labels[rows.ann_rows, rows.ann_columns] = 1
    image_dir = os.path.join(root, official_split)
    paths = join_inside(image_dir, columns.file_names[rows.image_positions].tolist(), annotation_file,
                        entry_name=lambda i: f"image id {int(rows.row_image_ids[i])}")
    if check_images:
        require_dir(image_dir, "COCO image")
        check_images_exist(paths, annotation_file)
    weights = None
    if geometry:
        per_annotation = annotation_weights(observed_sampling, rows.ann_rows, columns.ann_areas, columns.ann_boxes,
                                            columns.image_sizes[rows.image_positions], num_rows, annotation_file)
        weights = entry_weights(rows.ann_rows, rows.ann_columns, per_annotation, num_rows, num_classes)
    split = RawSplit(class_names=list(columns.category_names), labels=index_lists(labels), images=paths,
                     source=annotation_file, label_weights=weights)
    return list(columns.category_names), columns.category_ids, split


@register_dataset("coco2014")
class COCO2014(SPMLBuilder):
    """COCO 2014 SPML benchmark builder (see the module docstring for the raw layout).

    Splits: ``train`` and ``validation`` (80% / 20% of the annotated train2014 images, ``split_seed``
    1200) and ``test`` (the annotated val2014 images). Images without any instance annotation are
    dropped and counted in the build report. Besides ``observed_sampling="uniform"`` (default) and
    ``"weights"``, this builder offers ``"size"`` and ``"loc"``, the biased draws of Arroyo, Perona &
    Cole (ICLR 2023 Tiny Papers): see :mod:`spl_losses.data.coco_bias`.

    Args:
        root: Folder holding ``annotations/``, ``train2014/`` and ``val2014/``.
        **kwargs: :class:`~spl_losses.data.builder.SPMLConfig` fields (``seed``, ``split_seed``, ...)
            and ``datasets.DatasetBuilder`` arguments (``cache_dir``).
    """

    expected_num_pos = 2.9
    num_classes = 80
    source_description = (
        "COCO 2014 (train2014 / val2014) as multi-label classification over its 80 object categories: an "
        "image has a class when it has at least one instance annotation of it. train2014 is the training "
        "set (20% held out for validation), val2014 the test set. Annotations under CC BY 4.0; the images "
        "come from Flickr and their use is subject to Flickr's terms of use.")
    source_license = "cc-by-4.0"
    source_homepage = "https://cocodataset.org"
    source_citation = _COCO_CITATION
    class_list_note = ("the object categories in the order of the annotation files' 'categories' list "
                       "(80 in the official release: person ... toothbrush)")
    observed_sampling_rules = ("uniform", "size", "loc", "weights")

    def __init__(self, *args, **kwargs):
        self._category_ids: Dict[str, Tuple[str, np.ndarray]] = {}
        super().__init__(*args, **kwargs)

    def _load_raw_split(self, split: str) -> Optional[RawSplit]:
        if split not in COCO_SPLITS:
            return None
        _, cat_ids, raw = read_coco_split(self.root, COCO_SPLITS[split], check_images=False,
                                          observed_sampling=self.config.observed_sampling)
        self._category_ids[split] = (raw.source, cat_ids)
        for other, (other_file, other_ids) in self._category_ids.items():
            if other != split and not np.array_equal(other_ids, cat_ids):
                raise ValueError(
                    f"Class list mismatch: the category ids of {raw.source!r} differ from those of {other_file!r}")
        return raw
