"""cupy.random of the stand-in: NumPy's generator behind the device-array interface.

Seeded apart from NumPy's (a different stream for the same seed, as in the real CuPy), so a test
cannot pass by CPU and GPU drawing the same numbers by accident.
"""
import numpy


class Generator:
    def __init__(self, seed):
        self._numpy = numpy.random.default_rng([0x6C0DA, 0 if seed is None else seed])

    def standard_normal(self, size=None, dtype=numpy.float64):
        from . import ndarray
        return ndarray(numpy.asarray(self._numpy.standard_normal(size, dtype=dtype)))

    def random(self, size=None, dtype=numpy.float64):
        from . import ndarray
        return ndarray(numpy.asarray(self._numpy.random(size, dtype=dtype)))


def default_rng(seed=None):
    return Generator(seed)
