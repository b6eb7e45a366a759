"""Rank 1 fails while rank 0 waits in an allreduce; the job must end at once, not hang.

    mpiexec -n 2 python tests/mpi/mpi_abort.py raise | caught | kill

raise:  an exception nobody catches (the excepthook that distributed.init installs aborts)
caught: an exception inside abort_on_error that a handler outside would turn into an exit code
        (as the command line does), which alone would leave rank 0 waiting forever
kill:   rank 1 is killed (SIGKILL): mpiexec notices and ends the other ranks
"""
import os
import signal
import sys
import time

import numpy

from minitx import distributed

world = distributed.init()
if world.rank == 1:
    time.sleep(0.2)  # let rank 0 reach its allreduce
    if sys.argv[1] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if sys.argv[1] == "caught":
        try:
            with world.abort_on_error():
                raise ValueError("rank 1 broke on purpose")
        except ValueError:
            sys.exit(1)
    raise RuntimeError("rank 1 broke on purpose")
world.allreduce(numpy.ones(3))
print("rank 0 went past the allreduce")
