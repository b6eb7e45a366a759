"""Training on more than one process: MPI start-up, data parallel and tensor parallel.

    mpiexec -n 2 python -m minitx train --parallel data     # the batch split over the ranks
    mpiexec -n 2 python -m minitx train --parallel tensor   # every block split over the ranks

comm.py            start-up, the collectives, aborting the whole job when one rank fails
strategy.py        what the training loop asks of a strategy, for one process
data_parallel.py   broadcast weights, split the global batch, average gradients in flat buckets
tensor_parallel.py attention heads and MLP units split across ranks as sharded einsums
"""
from .comm import Communicator, init
from .data_parallel import DataParallel, GradientBuckets, broadcast_parameters, get_batch
from .strategy import SingleProcess
from .tensor_parallel import (CopyToShards, ShardedAttention, ShardedMLP, SumShards,
                              TensorParallel, shard, shard_model, sharded_parameters, unshard)

STRATEGIES = {"none": SingleProcess, "data": DataParallel, "tensor": TensorParallel}


def setup(kind, device="cpu"):
    """The strategy `kind` ("none", "data" or "tensor") on this job's ranks. "none" needs no
    MPI; the others start it (and still run, trivially, on a single process)."""
    if kind not in STRATEGIES:
        raise ValueError(f"unknown parallel {kind!r}: expected one of {sorted(STRATEGIES)}")
    if kind != "none" and device != "cpu":
        raise ValueError(f"parallel {kind!r} runs on the CPU: its collectives take NumPy arrays "
                         "(NCCL for GPUs is not written yet)")
    return STRATEGIES[kind](init() if kind != "none" else Communicator())
