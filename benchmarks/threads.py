"""The thread counts of BLAS, OpenMP and numba, which each reads once when it loads: a benchmark
sets them (`use_threads`) before it imports NumPy, torch or minitx. Imports nothing heavy."""
import os

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def use_threads(n):
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(n)


def recorded():
    """The thread settings in force, as NAME=value words for a results file."""
    return [f"{name}={os.environ[name]}" for name in THREAD_VARIABLES if name in os.environ]
