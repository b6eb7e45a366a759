"""The thread counts of BLAS, OpenMP and numba, which each reads once when it loads: a benchmark
sets them (`use_threads`) before it imports NumPy, torch or minitx. Imports nothing heavy."""
import os

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
# OpenBLAS's choice of kernels, when the environment makes it instead of OpenBLAS's own CPU
# detection (some machines pin an older kernel set; it changes matrix-product speed up to 2x)
BLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def use_threads(n):
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(n)


def recorded():
    """The thread and BLAS-kernel settings in force, as NAME=value words for a results file."""
    return [f"{name}={os.environ[name]}" for name in THREAD_VARIABLES + BLAS_VARIABLES
            if name in os.environ]
