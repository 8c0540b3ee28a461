"""``sampling_rng="reference"``: Cole et al.'s own draws and validation split, bit for bit.

The expected values are derived here independently of numpy: a pure-Python Mersenne Twister (the
MT19937 of ``numpy.random.RandomState``: ``init_genrand`` seeding, 32-bit tempered outputs), numpy's
legacy bounded integer (a masked draw, rejected while above the bound) and its Fisher-Yates shuffle
(from the last position down to 1). On top of it, the reference algorithm is written out: for each
row, the ascending positive indices shuffled and the first ``num_pos`` kept, then the ascending
negative indices shuffled (numbers consumed even when ``num_neg`` is 0) and the first ``num_neg``
kept; the split is ``perm = permutation(N)``, train ``sort(perm[:N - n_val])``, validation
``sort(perm[-n_val:])``.
"""
import random

import datasets
import numpy as np
import pytest

from raw_trees import write_coco_tree, write_cub_tree, write_nus_tree, write_voc_tree
from spl_losses.data import build_dataset
from spl_losses.data.reference_draws import reference_split, reference_uniform_draws, reference_weighted_draws


class PureMT19937:
    """MT19937 as numpy's legacy RandomState seeds it from an int (Matsumoto & Nishimura's init_genrand)."""

    def __init__(self, seed: int):
        self.state = [seed & 0xFFFFFFFF]
        for i in range(1, 624):
            prev = self.state[-1]
            self.state.append((1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF)
        self.index = 624

    def next_uint32(self) -> int:
        if self.index >= 624:
            for i in range(624):
                y = (self.state[i] & 0x80000000) | (self.state[(i + 1) % 624] & 0x7FFFFFFF)
                self.state[i] = self.state[(i + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            self.index = 0
        y = self.state[self.index]
        self.index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        return y ^ (y >> 18)

    def interval(self, bound: int) -> int:
        """Uniform in [0, bound]: the smallest all-ones mask covering ``bound``, rejection above it."""
        if bound == 0:
            return 0
        mask = (1 << bound.bit_length()) - 1
        while True:
            value = self.next_uint32() & mask
            if value <= bound:
                return value

    def shuffle(self, items: list) -> None:
        for i in reversed(range(1, len(items))):
            j = self.interval(i)
            items[i], items[j] = items[j], items[i]


def test_pure_mersenne_twister_matches_the_published_first_output():
    assert PureMT19937(5489).next_uint32() == 3499211612  # the reference implementation's default seed
    assert PureMT19937(1200).state == np.random.RandomState(1200).get_state()[1].tolist()  # the same seeding


def reference_by_hand(labels01, num_pos, num_neg, seed):
    """The reference's per-row procedure on a {0, 1} matrix, with the pure-Python generator."""
    mt = PureMT19937(seed)
    positives, negatives = [], []
    for row in labels01:
        pos = [c for c, v in enumerate(row) if v == 1]
        mt.shuffle(pos)
        positives.append(sorted(pos[:num_pos]))
        neg = [c for c, v in enumerate(row) if v == 0]
        mt.shuffle(neg)
        negatives.append(sorted(neg[:num_neg]))
    return positives, negatives


LABELS = [  # 7 rows x 6 classes: several positives, one positive, none, all
    [1, 0, 1, 1, 0, 0],
    [0, 1, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0],
    [1, 1, 1, 1, 1, 1],
    [0, 1, 1, 0, 1, 1],
    [1, 0, 0, 0, 0, 1],
    [0, 0, 1, 1, 1, 0],
]


@pytest.mark.parametrize("num_pos, num_neg, seed", [(1, 0, 1200), (1, 2, 1200), (2, 1, 7), (1, 0, 0)])
def test_uniform_draws_equal_the_algorithm_computed_by_hand(num_pos, num_neg, seed):
    expected_pos, expected_neg = reference_by_hand(LABELS, num_pos, num_neg, seed)
    lists = [[c for c, v in enumerate(row) if v] for row in LABELS]
    drawn = reference_uniform_draws(lists, 6, num_positives=num_pos, num_negatives=num_neg, seed=seed)
    assert drawn.positives == expected_pos
    assert drawn.negatives == expected_neg


def test_uniform_draws_consume_numbers_for_negatives_even_when_none_are_kept():
    # the second row's draw depends on how many numbers the first row consumed for its negatives
    lists = [[0, 1], [0, 1, 2, 3]]
    with_negatives_shuffled = reference_by_hand([[1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]], 1, 0, 1200)[0]
    assert reference_uniform_draws(lists, 8, seed=1200).positives == with_negatives_shuffled


def test_golden_values_seed_1200():
    # the result for LABELS, seed 1200 (computed with reference_by_hand), fixed here against drift
    golden_pos = [[0], [1], [], [2], [2], [0], [2]]
    golden_neg = [[4, 5], [4, 5], [0, 1], [], [0, 3], [2, 3], [0, 5]]
    assert reference_by_hand(LABELS, 1, 2, 1200) == (golden_pos, golden_neg)
    drawn = reference_uniform_draws([[c for c, v in enumerate(r) if v] for r in LABELS], 6, num_negatives=2, seed=1200)
    assert (drawn.positives, drawn.negatives) == (golden_pos, golden_neg)


@pytest.mark.parametrize("n, fraction, seed", [(10, 0.2, 1200), (37, 0.2, 1200), (101, 0.3, 5)])
def test_split_equals_the_algorithm_computed_by_hand(n, fraction, seed):
    mt = PureMT19937(seed)
    perm = list(range(n))
    mt.shuffle(perm)  # RandomState.permutation(n): a shuffled arange
    n_val = int(round(fraction * n))
    train, val = reference_split(n, fraction, seed)
    assert train.tolist() == sorted(perm[:n - n_val])
    assert val.tolist() == sorted(perm[-n_val:])


def test_weighted_draws_follow_random_choices():
    labels = [[0, 2], [1], [0, 1, 3], [], [2, 3]]
    weights = [[0.25, 0.75], [2.0], [1.0, 0.0, 3.0], [], [0.0, 0.0]]
    rng = random.Random(1200)  # random.seed(1200), then one random.choices per row with a positive
    expected = []
    for row, w in zip(labels, weights):
        if not row:
            expected.append([])
        elif not any(w):
            expected.append([rng.choice(row)])
        else:
            full = [0.0] * 4
            for c, x in zip(row, w):
                full[c] = x
            expected.append([rng.choices(range(4), weights=full)[0]])
    assert reference_weighted_draws(labels, weights, 4, seed=1200) == expected


# ------------------------------------------------------------------------------------ the builders
WRITERS = {"voc2012": write_voc_tree, "coco2014": write_coco_tree, "nuswide": write_nus_tree,
           "cub200": write_cub_tree}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_builders_reproduce_the_reference_draws_and_split(tmp_path, name):
    """The formatted label matrix is written down from the tree's expected rows (the reference's order),
    then the reference's procedure is run on it with numpy's RandomState, as its scripts do."""
    root = str(tmp_path / "raw")
    expected = WRITERS[name](root)
    ds = build_dataset(name, root=root, sampling_rng="reference", num_negatives=1, cache_dir=str(tmp_path / "c"))
    names = expected.class_names
    draws = {}
    for official in ("train", "test"):
        rows = list(expected.positives[official].items())  # kept rows, in the reference's formatted order
        matrix = np.array([[1.0 if n in pos else -1.0 for n in names] for _, pos in rows])
        rng = np.random.RandomState(1200)
        observed = []
        for i in range(len(rows)):
            idx = np.nonzero(matrix[i, :] == 1.0)[0]
            rng.shuffle(idx)
            keep_pos = sorted(idx[:1].tolist())
            idx = np.nonzero(matrix[i, :] == -1.0)[0]
            rng.shuffle(idx)
            observed.append((rows[i][0], keep_pos, sorted(idx[:1].tolist())))
        draws[official] = observed
    n = len(draws["train"])
    n_val = int(np.round(0.2 * n))
    perm = np.random.RandomState(1200).permutation(n)
    final = {"train": [draws["train"][i] for i in np.sort(perm[:n - n_val])],
             "validation": [draws["train"][i] for i in np.sort(perm[-n_val:])],
             "test": draws["test"]}
    for split, rows in final.items():
        paths = [row["path"] for row in ds[split].cast_column("image", datasets.Image(decode=False))["image"]]
        assert paths == [r[0] for r in rows]
        assert list(ds[split]["observed_labels"]) == [r[1] for r in rows]
        assert list(ds[split]["observed_negatives"]) == [r[2] for r in rows]
