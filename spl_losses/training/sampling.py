"""Data order and augmentation draws that are a pure function of (seed, epoch).

Making every random draw of an epoch a function of the run's seed and the epoch number (and not of
a global RNG's history) is what lets an interrupted run resume exactly, and makes one process and
several processes see the same global batches.
"""
from typing import Iterator, List, Tuple

import torch
from torch.utils.data import Sampler

__all__ = ["epoch_generator", "epoch_permutation", "epoch_flip_mask", "EpochPermutationSampler",
           "ShardedBatchSampler", "share_bounds", "check_process_shares"]

_PERMUTATION_STREAM = 0
_FLIP_STREAM = 1


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded from ``(seed, epoch, stream)`` only.

    Args:
        seed: The run's seed.
        epoch: 0-based epoch.
        stream: Distinguishes independent draws of the same epoch (order, flips, ...).
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch) * 101 + int(stream))


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The training order of ``epoch``: a permutation of ``range(num_examples)`` (int64, CPU).

    Args:
        num_examples: N.
        seed: The run's seed.
        epoch: 0-based epoch.
    """
    return torch.randperm(num_examples, generator=epoch_generator(seed, epoch, _PERMUTATION_STREAM))


def epoch_flip_mask(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """Which training examples are horizontally flipped in ``epoch``: a (N,) bool tensor (p = 0.5).

    Args:
        num_examples: N.
        seed: The run's seed.
        epoch: 0-based epoch.
    """
    return torch.rand(num_examples, generator=epoch_generator(seed, epoch, _FLIP_STREAM)) < 0.5


class EpochPermutationSampler(Sampler):
    """Yields :func:`epoch_permutation` of the epoch set with :meth:`set_epoch`.

    Pass it as the ``sampler`` of a DataLoader; ``accelerate`` shards the resulting batches over
    processes, so the global batches are the same for any number of processes.

    Args:
        num_examples: N.
        seed: The run's seed.
    """

    def __init__(self, num_examples: int, seed: int):
        if num_examples <= 0:
            raise ValueError(f"num_examples must be positive, got {num_examples}")
        self.num_examples = int(num_examples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation the next iteration yields.

        Args:
            epoch: 0-based epoch.
        """
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_permutation(self.num_examples, self.seed, self.epoch).tolist())

    def __len__(self) -> int:
        return self.num_examples


def share_bounds(batch_rows: int, world_size: int, rank: int) -> Tuple[int, int]:
    """``[start, stop)`` of process ``rank``'s share of a batch of ``batch_rows`` rows split over ``world_size``.

    Contiguous shares in rank order, the first ``batch_rows % world_size`` one row longer (for a batch
    divisible by the process count, what accelerate's ``split_batches`` gives). A share may be empty.

    Args:
        batch_rows: Rows of the global batch.
        world_size: P.
        rank: This process's rank.
    """
    base, extra = divmod(batch_rows, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class ShardedBatchSampler(Sampler):
    """This process's share of every global batch of an epoch's order, the last (short) batch included.

    The global batches are ``epoch_permutation(N, seed, epoch)`` cut every ``batch_size`` rows, so P
    processes together train exactly the batches one process trains: nothing is padded or repeated
    (accelerate's sharding pads the last batch with rows from the first). A share of the last batch may be
    empty when it has fewer rows than processes.

    Args:
        num_examples: N.
        batch_size: The global batch size B.
        seed: The run's seed.
        rank: This process's rank.
        world_size: P, the number of processes.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if num_examples <= 0 or batch_size <= 0:
            raise ValueError(f"num_examples and batch_size must be positive, got {num_examples} and {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
        self.num_examples, self.batch_size, self.seed = int(num_examples), int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields.

        Args:
            epoch: 0-based epoch.
        """
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[List[int]]:
        order = epoch_permutation(self.num_examples, self.seed, self.epoch).tolist()
        for begin in range(0, self.num_examples, self.batch_size):
            batch = order[begin:begin + self.batch_size]
            start, stop = share_bounds(len(batch), self.world_size, self.rank)
            yield batch[start:stop]

    def __len__(self) -> int:
        return -(-self.num_examples // self.batch_size)


def check_process_shares(model: torch.nn.Module, num_examples: int, batch_size: int, num_processes: int) -> None:
    """Refuse, before training, an epoch whose last global batch leaves a process no rows for a BatchNorm model.

    Args:
        model: The network.
        num_examples: Training examples.
        batch_size: The global batch size.
        num_processes: Processes the batch is split over.

    Raises:
        ValueError: naming the sizes and what to change.
    """
    last = num_examples % batch_size
    if 0 < last < num_processes and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError(f"the last global batch of every epoch has {last} row(s) ({num_examples} training examples, "
                         f"batch size {batch_size}), fewer than the {num_processes} processes: a process would get "
                         "no rows, which BatchNorm cannot train on; choose a batch size or process count that leaves "
                         "at least one row per process")
