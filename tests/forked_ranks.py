"""Run a function on P forked CPU processes joined by gloo and collect what each rank returns."""
import os
import tempfile

import torch


def _rank(rank, world_size, init_file, out_dir, fn):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.save(fn(world_size, rank), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def run_ranks(fn, world_size):
    """``[fn(world_size, rank) for each rank]``, each computed in its own forked process of one gloo group.

    Args:
        fn: A module-level function of ``(world_size, rank)`` returning torch-saveable results.
        world_size: P.
    """
    from torch.multiprocessing import start_processes

    with tempfile.TemporaryDirectory() as tmp:
        start_processes(_rank, args=(world_size, os.path.join(tmp, "init"), tmp, fn), nprocs=world_size,
                        start_method="fork")
        return [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world_size)]
