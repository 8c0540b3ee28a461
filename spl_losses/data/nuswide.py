"""NUS-WIDE as an SPML benchmark (81 concepts), in the re-crawled form of Cole et al. (CVPR 2021).

Cole et al. re-crawled NUS-WIDE from Flickr in 2020 and distribute the result as formatted arrays;
the images come from the official ``Flickr.zip``. NUS-WIDE's site hosts only its concept list, labels
and tags for download (``spl-data download nuswide --data-dir ROOT`` fetches ``ConceptsList.zip``,
``Groundtruth.zip`` and ``NUS_WID_Tags.zip``, for which no checksum is published); the images and the
formatted arrays cannot be downloaded from it, and are placed under ``root`` by the user. Raw layout
under ``root``::

    formatted_train_images.npy   (N_train,) str: image paths relative to Flickr/
    formatted_train_labels.npy   (N_train, 81) {0, 1} label matrix
    formatted_val_images.npy     (N_val,) str
    formatted_val_labels.npy     (N_val, 81)
    Flickr/{concept_folder}/{file}.jpg
    Concepts81.txt               optional: the concept names, one a line, in column order
                                 (also read from ConceptsList/Concepts81.txt)

Class names: the label columns follow NUS-WIDE's 81-concept list ``ConceptsList/Concepts81.txt``
of the official download (alphabetical, ``airport`` … ``zebra``). The formatted arrays carry no
names, so that list is the default; when a ``Concepts81.txt`` is found under ``root`` or given as
``concepts_file`` it is read instead. (The NUS-WIDE ``TagList1k``/``AllTags81`` lists differ; they
are not used.)

The ``formatted_train_*`` arrays are the official training set; ``formatted_val_*`` are the official
test set, our ``test`` split. Rows with no positive label are kept (all-zero row, no observed
positive) and counted in the build report; rows keep the arrays' order, the reference's, so
``sampling_rng="reference"`` reproduces its draws (with the default ``drop_without_positive=False``).
Image paths must stay inside ``Flickr/`` (a path that leaves it is refused, naming the row).
"""
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from .builder import SPMLBuilder, SPMLConfig
from .image_checks import join_inside
from .raw_files import RawSplit, check_images_exist, index_lists, require_dir, require_file
from .registry import register_dataset

__all__ = ["NUSWIDE", "NUSWIDEConfig", "NUSWIDE_CONCEPTS81", "NUS_SPLITS", "find_concepts_file", "read_concept_names",
           "read_nuswide_split"]

#: NUS-WIDE's 81 concepts in the order of the official ``Concepts81.txt``.
NUSWIDE_CONCEPTS81 = [
    "airport", "animal", "beach", "bear", "birds", "boats", "book", "bridge", "buildings", "cars",
    "castle", "cat", "cityscape", "clouds", "computer", "coral", "cow", "dancing", "dog", "earthquake",
    "elk", "fire", "fish", "flags", "flowers", "food", "fox", "frost", "garden", "glacier",
    "grass", "harbor", "horses", "house", "lake", "leaf", "map", "military", "moon", "mountain",
    "nighttime", "ocean", "person", "plane", "plants", "police", "protest", "railroad", "rainbow", "reflection",
    "road", "rocks", "running", "sand", "sign", "sky", "snow", "soccer", "sports", "statue",
    "street", "sun", "sunset", "surf", "swimmers", "tattoo", "temple", "tiger", "tower", "town",
    "toy", "train", "tree", "valley", "vehicle", "water", "waterfall", "wedding", "whales", "window",
    "zebra",
]

#: Our split name -> the prefix of the reference's formatted files.
NUS_SPLITS = {"train": "formatted_train", "test": "formatted_val"}

_NUS_CITATION = """@inproceedings{chua2009nuswide,
  title = {{NUS-WIDE}: A Real-World Web Image Database from National University of Singapore},
  author = {Chua, Tat-Seng and Tang, Jinhui and Hong, Richang and Li, Haojie and Luo, Zhiping and Zheng, Yantao},
  booktitle = {ACM International Conference on Image and Video Retrieval (CIVR)},
  year = {2009}
}
@inproceedings{cole2021multi,
  title = {Multi-Label Learning from Single Positive Labels},
  author = {Cole, Elijah and Mac Aodha, Oisin and Lorieul, Titouan and Perona, Pietro and Morris, Dan and Jojic, Nebojsa},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year = {2021}
}"""


def find_concepts_file(root: str) -> Optional[str]:
    """Return ``root/Concepts81.txt`` or ``root/ConceptsList/Concepts81.txt`` if present, else None.

    Args:
        root: The NUS-WIDE folder.
    """
    for candidate in (os.path.join(root, "Concepts81.txt"), os.path.join(root, "ConceptsList", "Concepts81.txt")):
        if os.path.isfile(candidate):
            return candidate
    return None


def read_concept_names(path: str) -> List[str]:
    """Read a concept list: one name a line, blank lines ignored.

    Args:
        path: The file.
    """
    with open(path, "r", encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"{path!r} lists a concept name twice")
    return names


def _load_array(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:  # object arrays need pickle, which is not loaded from user files
        raise ValueError(f"{path!r} could not be read as a plain numpy array (str or numbers): {err}") from None


def _relative_to_flickr(path: str) -> str:
    path = str(path).replace("\\", "/").lstrip("/")
    return path[len("Flickr/"):] if path.startswith("Flickr/") else path


def read_nuswide_split(root: str, prefix: str, class_names: Sequence[str] = NUSWIDE_CONCEPTS81,
                       check_images: bool = True) -> RawSplit:
    """Read one pair of formatted arrays (``{prefix}_images.npy``, ``{prefix}_labels.npy``).

    Args:
        root: The NUS-WIDE folder.
        prefix: ``"formatted_train"`` or ``"formatted_val"``.
        class_names: The concept names of the label columns.
        check_images: Check that every listed image exists under ``Flickr/``.

    Returns:
        The split, rows in the arrays' order.

    Raises:
        ValueError: a missing file or image, arrays of mismatched lengths, labels other than 0/1, a
            column count other than ``len(class_names)``, or a path leaving ``Flickr/``.
    """
    images_file = require_file(os.path.join(root, f"{prefix}_images.npy"), "NUS-WIDE image list")
    labels_file = require_file(os.path.join(root, f"{prefix}_labels.npy"), "NUS-WIDE label matrix")
    images, labels = _load_array(images_file), _load_array(labels_file)
    if images.ndim != 1:
        raise ValueError(f"{images_file!r} must hold a 1-D array of paths, got shape {images.shape}")
    if labels.ndim != 2 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{labels_file!r} must hold a ({images.shape[0]}, C) matrix, one row per image of "
            f"{images_file!r}; got shape {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{labels_file!r} must hold {{0, 1}} labels")
    if labels.shape[1] != len(class_names):
        raise ValueError(f"Class list mismatch: {labels_file!r} has {labels.shape[1]} columns but the concept list "
                         f"names {len(class_names)} concepts")
    if images.dtype.kind == "S":  # byte strings (arrays saved under Python 2 or with dtype "S")
        images = np.char.decode(images, "utf-8")
    if images.dtype.kind != "U":
        raise ValueError(f"{images_file!r} must hold image paths (strings), got dtype {images.dtype}")
    image_dir = os.path.join(root, "Flickr")
    paths = join_inside(image_dir, [_relative_to_flickr(p) for p in images.tolist()], images_file)
    if check_images:
        require_dir(image_dir, "NUS-WIDE Flickr image")
        check_images_exist(paths, images_file)
    return RawSplit(class_names=list(class_names), labels=index_lists(labels), images=paths,
                    source=f"{images_file}, {labels_file}")


@dataclass
class NUSWIDEConfig(SPMLConfig):
    """NUS-WIDE builder configuration.

    Args:
        concepts_file: Concept list naming the label columns (default: ``Concepts81.txt`` under
            ``root`` if present, else the built-in Concepts81 list).
        drop_without_positive: Rows without any positive are kept by default (all-zero labels, no
            observed positive); set True to drop them.
    """

    concepts_file: Optional[str] = None
    drop_without_positive: bool = False


@register_dataset("nuswide")
class NUSWIDE(SPMLBuilder):
    """NUS-WIDE (81 concepts, the reference's re-crawled subset) SPML benchmark builder.

    See the module docstring for the expected files. Splits: ``train`` and ``validation`` (80% / 20%
    of ``formatted_train_*``, ``split_seed`` 1200) and ``test`` (``formatted_val_*``). Rows without a
    positive are kept (empty ``observed_labels``) and counted in the build report.

    Args:
        root: Folder holding the ``formatted_*.npy`` arrays and ``Flickr/``.
        **kwargs: :class:`NUSWIDEConfig` fields (``seed``, ``concepts_file``, ...) and
            ``datasets.DatasetBuilder`` arguments (``cache_dir``).
    """

    BUILDER_CONFIG_CLASS = NUSWIDEConfig
    path_options = ("class_weights_file", "concepts_file")
    expected_num_pos = 1.9
    num_classes = len(NUSWIDE_CONCEPTS81)
    source_description = (
        "NUS-WIDE, 81 concepts, as re-crawled from Flickr in 2020 by Cole et al. (CVPR 2021) and distributed "
        "as formatted arrays of image paths and label matrices; the images come from the official "
        "Flickr.zip. The formatted train arrays are the training set (20% held out for validation), the "
        "formatted val arrays the test set. NUS-WIDE is released for research purposes; the images are "
        "subject to Flickr's terms of use.")
    source_license = "other"
    source_homepage = "https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/NUS-WIDE.html"
    source_citation = _NUS_CITATION
    class_list_note = (
        "NUS-WIDE's 81 concepts of ConceptsList/Concepts81.txt, in that file's alphabetical order "
        "(airport ... zebra), unless a Concepts81.txt under the raw folder or concepts_file says otherwise")

    def _load_class_names(self) -> List[str]:
        concepts_file = self.config.concepts_file or find_concepts_file(self.root)
        if concepts_file is None:
            return list(NUSWIDE_CONCEPTS81)
        return read_concept_names(require_file(concepts_file, "NUS-WIDE concept list"))

    def _load_raw_split(self, split: str) -> Optional[RawSplit]:
        if split not in NUS_SPLITS:
            return None
        return read_nuswide_split(self.root, NUS_SPLITS[split], self._load_class_names(), check_images=False)
