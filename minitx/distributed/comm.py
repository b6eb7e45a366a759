"""Start-up under mpiexec: which process am I, how many are we, and how we talk.

    mpiexec -n 2 python -m minitx train --parallel data

starts two copies of one program. MPI (through mpi4py) gives each its `rank` (0 or 1) and the
`size` of the job, and carries the collectives: broadcast (rank 0's array to every rank),
allreduce (the sum of every rank's array, on every rank) and allgather (every rank's array, on
every rank). A collective is a meeting: every rank must call the same ones in the same order,
or the others wait for it forever. So an error on one rank must end the whole job (MPI_Abort),
never leave the other ranks waiting.

`Communicator()` without an MPI communicator is the job of one process: rank 0 of 1, every
collective a no-op, and no need for mpi4py. The same training code runs either way.
"""
import contextlib
import os
import sys
import time
import traceback

import numpy

INSTALL_HINT = 'pip install mpi4py mpich (or pip install -e ".[distributed]")'


class Communicator:
    """The ranks of one job and the collectives minitx uses, on NumPy arrays, in place.

    `bytes_sent` counts the payload of every collective (what one rank hands to MPI); read it
    before and after a step to see what the step communicated.
    """

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.bytes_sent = 0

    @property
    def is_main(self):
        """Rank 0: the one that writes files and talks to the user."""
        return self.rank == 0

    def _mpi_array(self, array):
        if not isinstance(array, numpy.ndarray) or not array.flags.c_contiguous:
            raise TypeError("collectives need C-contiguous NumPy arrays (GPU arrays would need "
                            "NCCL, which minitx.distributed does not have yet)")
        self.bytes_sent += array.nbytes
        return array

    def allreduce(self, array):
        """Sum `array` over all ranks, in place: afterwards every rank holds the sum."""
        if self.size > 1:
            from mpi4py import MPI
            self.comm.Allreduce(MPI.IN_PLACE, self._mpi_array(array), op=MPI.SUM)
        return array

    def broadcast(self, array, root=0):
        """Overwrite `array` on every rank with rank `root`'s, in place."""
        if self.size > 1:
            self.comm.Bcast(self._mpi_array(array), root=root)
        return array

    def allgather(self, array):
        """Every rank's `array` (all the same shape), stacked in rank order: (size, *shape)."""
        if self.size == 1:
            return array[None]
        out = numpy.empty((self.size,) + array.shape, array.dtype)
        self.comm.Allgather(self._mpi_array(numpy.ascontiguousarray(array)), out)
        return out

    def mean(self, value):
        """The mean over ranks of a Python float (the loss of each rank's share of the batch)."""
        return float(self.allreduce(numpy.array([value], dtype=numpy.float64))[0]) / self.size

    def any(self, flag):
        """True on every rank if `flag` is true on some rank (say, Ctrl-C seen by one of them)."""
        return bool(self.allreduce(numpy.array([int(flag)], dtype=numpy.int64))[0])

    def barrier(self):
        if self.size > 1:
            self.comm.Barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (say, writing a cache or a file), the others after it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def abort(self, message, code=1):
        """Print `message` with this rank's name and end every rank of the job now."""
        print(f"minitx: rank {self.rank} of {self.size}: {message}; aborting all ranks "
              "(MPI_Abort)", file=sys.stderr, flush=True)
        time.sleep(0.5)  # mpiexec relays output through a pipe: let it pass before the job ends
        self.comm.Abort(code)

    @contextlib.contextmanager
    def abort_on_error(self):
        """Run a block; if it raises on this rank, print the traceback and abort the job, so the
        other ranks do not wait in their next collective forever."""
        try:
            yield
        except BaseException as error:
            if self.size > 1 and not (isinstance(error, SystemExit) and error.code in (0, None)):
                traceback.print_exc()
                self.abort(f"{type(error).__name__}: {error}")
            raise


def share_cores(ranks_here):
    """Give each of the `ranks_here` ranks on this machine its share of the cores for NumPy's BLAS
    and numba's threads: with more threads than cores, every collective waits for the slowest."""
    import numba
    import threadpoolctl
    n = max(1, len(os.sched_getaffinity(0)) // ranks_here)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))  # (may load its thread pool)
    threadpoolctl.threadpool_limits(n)


def init():
    """The communicator of this job (MPI_COMM_WORLD; of one process when not under mpiexec).

    When the job has more than one rank, an exception that reaches the top of the program
    aborts all of them (see Communicator.abort_on_error).
    """
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise RuntimeError(f"running on more than one process needs mpi4py and an MPI library "
                           f"({error}): {INSTALL_HINT}") from None
    world = Communicator(MPI.COMM_WORLD)
    ranks_here = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
    if ranks_here > 1:
        share_cores(ranks_here)
    if world.size > 1:
        previous = sys.excepthook

        def abort_uncaught(kind, error, tb):
            previous(kind, error, tb)
            world.abort(f"{kind.__name__}: {error}")
        sys.excepthook = abort_uncaught
    return world
