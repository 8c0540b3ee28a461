"""The official archives of each benchmark: where they are hosted, their sizes and checksums.

Each entry names the file, its official URL, its size in bytes and the checksum published for it,
and the member paths that the dataset's builder reads from it (checked after extraction, so an
archive that does not hold what the builder needs is an error at download time, not at build time).
Where no checksum is published the field is None and the download says that it is unverified.

Sources of the checksums (each restated per entry):

- torchvision, ``torchvision/datasets/voc.py`` (``DATASET_YEAR_DICT["2012"]``): the MD5 of
  ``VOCtrainval_11-May-2012.tar`` at its official URL.
- TensorFlow Datasets, ``tensorflow_datasets/url_checksums/voc.txt``, ``coco.txt`` and
  ``caltech_birds2011.txt``: sizes and SHA-256 of the same files.
- The CUB-200-2011 loaders of Avalanche (``avalanche/benchmarks/datasets/cub200``) and of
  ``TDeVries/cub2011_dataset``: the MD5 of ``CUB_200_2011.tgz``.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

__all__ = ["Archive", "DatasetDownload", "ARCHIVES"]


@dataclass(frozen=True)
class Archive:
    """One downloadable file.

    Args:
        filename: The file's name, on disk and under a ``--mirror`` base URL.
        url: Its official URL.
        size: Its size in bytes, or None where unknown.
        md5: Hex MD5 to verify, or None.
        sha256: Hex SHA-256 to verify, or None. Every hash given is verified.
        provides: Paths (relative to the data folder, ``/``-separated) that the builder reads and that
            extracting the archive must create.
        extract: Whether the file is an archive to unpack (``.tar``, ``.tgz``, ``.tar.gz``, ``.zip``).
    """

    filename: str
    url: str
    size: Optional[int]
    md5: Optional[str] = None
    sha256: Optional[str] = None
    provides: Tuple[str, ...] = ()
    extract: bool = True

    @property
    def checksum(self) -> Optional[Tuple[str, str]]:
        """``(algorithm, hex digest)`` recorded in the marker: SHA-256 if known, else MD5, else None."""
        if self.sha256:
            return ("sha256", self.sha256.lower())
        if self.md5:
            return ("md5", self.md5.lower())
        return None


@dataclass(frozen=True)
class DatasetDownload:
    """What ``spl-data download NAME`` fetches for one dataset.

    Args:
        archives: The files.
        note: Printed after the download (what the download does not include).
        external: Paths the builder also needs that no official archive holds; ``build --download``
            checks them before downloading anything.
    """

    archives: Tuple[Archive, ...]
    note: str = ""
    external: Tuple[str, ...] = field(default_factory=tuple)


_VOC_MAIN = "VOCdevkit/VOC2012/ImageSets/Main"
_NUS_BASE = "https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide"

ARCHIVES: Dict[str, DatasetDownload] = {
    "voc2012": DatasetDownload(archives=(
        # MD5: torchvision voc.py (same URL). SHA-256 e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb
        # and size 1999639040: TFDS url_checksums/voc.txt, published for the pjreddie.com copy of this file, so
        # only the size and the MD5 (published for the official URL) are verified.
        Archive("VOCtrainval_11-May-2012.tar",
                "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                size=1999639040, md5="6cd6e144f989b92b3379bac3b3de84fd",
                provides=(_VOC_MAIN, "VOCdevkit/VOC2012/JPEGImages")),
    )),
    "coco2014": DatasetDownload(archives=(
        # sizes and SHA-256: TFDS url_checksums/coco.txt (same URLs)
        Archive("annotations_trainval2014.zip",
                "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
                size=252872794, sha256="031296bbc80c45a1d1f76bf9a90ead27e94e99ec629208449507a4917a3bf009",
                provides=("annotations/instances_train2014.json", "annotations/instances_val2014.json")),
        Archive("train2014.zip", "http://images.cocodataset.org/zips/train2014.zip",
                size=13510573713, sha256="ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775",
                provides=("train2014",)),
        Archive("val2014.zip", "http://images.cocodataset.org/zips/val2014.zip",
                size=6645013297, sha256="fe9be816052049c34717e077d9e34aa60814a55679f804cd043e3cbee3b9fde0",
                provides=("val2014",)),
    )),
    "cub200": DatasetDownload(archives=(
        # MD5: Avalanche's and TDeVries' CUB-200-2011 loaders (this file, at this URL and at its former
        # vision.caltech.edu address). Size 1150585339 and SHA-256
        # 0c685df5597a8b24909f6a7c9db6d11e008733779a671760afef78feb49bf081: TFDS url_checksums/caltech_birds2011.txt,
        # published for a Google Drive copy of CUB_200_2011.tgz, so only the size and the MD5 are verified.
        Archive("CUB_200_2011.tgz", "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
                size=1150585339, md5="97eceeb196236b17998738112f37df78",
                provides=("CUB_200_2011/images.txt", "CUB_200_2011/train_test_split.txt",
                          "CUB_200_2011/attributes/image_attribute_labels.txt", "attributes.txt",
                          "CUB_200_2011/images")),
    )),
    "nuswide": DatasetDownload(
        archives=(
            # NUS-WIDE's own site publishes no size or checksum for these files: they are unverified.
            Archive("ConceptsList.zip", f"{_NUS_BASE}/ConceptsList.zip", size=None),
            Archive("Groundtruth.zip", f"{_NUS_BASE}/Groundtruth.zip", size=None),
            Archive("NUS_WID_Tags.zip", f"{_NUS_BASE}/NUS_WID_Tags.zip", size=None),
        ),
        note=("NUS-WIDE's authors host its concept list, ground-truth labels and tags (downloaded now), but not "
              f"its images, which are Flickr's photos ({_NUS_BASE}/NUS-WIDE.html lists their URLs). The nuswide builder reads the re-crawled subset of Cole et al. "
              "(CVPR 2021, github.com/elijahcole/single-positive-multi-label): formatted_train_images.npy, "
              "formatted_train_labels.npy, formatted_val_images.npy, formatted_val_labels.npy (paths relative "
              "to Flickr/, with or without a leading 'Flickr/') and the images under Flickr/; the concept names "
              "come from Concepts81.txt or ConceptsList/Concepts81.txt when present. Place those files in the "
              "data folder."),
        external=("formatted_train_images.npy", "formatted_train_labels.npy", "formatted_val_images.npy",
                  "formatted_val_labels.npy", "Flickr"),
    ),
}
