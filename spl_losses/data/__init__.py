"""SPML datasets as Hugging Face ``datasets``: builders, single-positive sampling, loading, cards.

Every builder yields a ``datasets.DatasetDict`` with splits ``train``, ``validation``, ``test`` and
columns ``image`` (or ``features``), ``labels``, ``observed_labels`` (``List(ClassLabel)``) and
``index`` (int64). See :func:`build_dataset` and :func:`load_spml_dataset`; :mod:`.columns` reads whole
columns in bulk from Arrow (:func:`feature_matrix`, :func:`label_matrix`).
"""
from .columns import ListColumn, feature_matrix, feature_tensor, index_column, label_matrix, list_column
from .registry import DatasetInfo, get_dataset_class, get_dataset_info, is_dataset, list_datasets, register_dataset
from .sampling import ObservedLabels, add_observed_labels, hash_keys, sample_single_positive, split_train_validation
from .raw_files import RawSplit
from .builder import SPMLBuilder, SPMLConfig, build_dataset, create_builder
from .options import check_dataset_options, parse_dataset_options
from .loading import check_spml_dataset, load_spml_dataset
from .fingerprint import dataset_fingerprint

# builder modules register themselves on import
from . import digits_mosaic, generic
from . import voc2012, coco2014, nuswide, cub200
