"""The stand-in's kernel engine: CUDA C++ source built with g++ and run on the CPU.

Each launch runs `block` std::threads, one per CUDA thread. They share the kernel's __shared__
arrays (made function statics), meet at a std::barrier for __syncthreads(), and run the grid's
blocks one after another, with a barrier between blocks. This checks a kernel's indexing, tiling,
masks and arithmetic against the reference; it says nothing about speed, warps or memory
ordering beyond __syncthreads(). A kernel that lets some threads return before a __syncthreads()
the others reach deadlocks here, as it would misbehave on a GPU.

Builds are cached by a hash of the source and instance names (in $MINITX_STANDIN_CACHE, default
~/.cache/minitx-cupy-standin), so subprocesses and later runs reuse them.
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy

PRELUDE = r"""
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>
struct dim3_ { unsigned x = 0, y = 0, z = 0; };
thread_local dim3_ threadIdx, blockIdx;
dim3_ blockDim, gridDim;
std::barrier<>* block_barrier;
#define __global__
#define __device__
#define __shared__ static
inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, sizeof f); return f; }
inline double __longlong_as_double(long long i) {
    double d; std::memcpy(&d, &i, sizeof d); return d;
}
using std::min;
using std::max;
"""
LAUNCHER = r"""
// Launch like cuLaunchKernel: args[i] points at the value of parameter i.
template <typename... P>
void launch(void (*kernel)(P...), unsigned grid, unsigned block, void** args) {
    std::size_t i = 0;
    std::tuple<P...> values{*static_cast<std::remove_reference_t<P>*>(args[i++])...};
    blockDim.x = block;
    gridDim.x = grid;
    std::barrier<> barrier(block);
    block_barrier = &barrier;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; t++)
        threads.emplace_back([&, t] {
            threadIdx.x = t;
            for (unsigned b = 0; b < grid; b++) {
                blockIdx.x = b;
                std::apply(kernel, values);
                barrier.arrive_and_wait();     // the whole block is done before the next starts
            }
        });
    for (auto& thread : threads) thread.join();
}
"""
_CTYPES = {numpy.dtype(numpy.int32): ctypes.c_int32, numpy.dtype(numpy.int64): ctypes.c_int64,
           numpy.dtype(numpy.float32): ctypes.c_float,
           numpy.dtype(numpy.float64): ctypes.c_double}
_built = {}   # cache key -> {name: launch function}


def _cache_dir():
    folder = os.environ.get("MINITX_STANDIN_CACHE",
                            os.path.join(os.path.expanduser("~"), ".cache", "minitx-cupy-standin"))
    os.makedirs(folder, exist_ok=True)
    return folder


def build(code, names):
    """{name: launch(grid, block, args)} for the kernel instances `names` of CUDA source `code`."""
    key = hashlib.sha256((PRELUDE + LAUNCHER + code + "\n".join(names)).encode()).hexdigest()[:20]
    if key not in _built:
        library = os.path.join(_cache_dir(), f"{key}.so")
        if not os.path.exists(library):
            _compile(code, names, library)
        lib = ctypes.CDLL(library)
        _built[key] = {name: _launcher(getattr(lib, f"launch_{n}"))
                       for n, name in enumerate(names)}
    return _built[key]


def _compile(code, names, library):
    if shutil.which("g++") is None:
        raise RuntimeError("the CuPy stand-in builds CUDA kernels with g++, which is not on PATH")
    exports = [f'extern "C" void launch_{n}(unsigned g, unsigned b, void** a) '
               f'{{ launch({name}, g, b, a); }}' for n, name in enumerate(names)]
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "kernels.cpp")
        with open(source, "w") as f:
            f.write(PRELUDE + code + LAUNCHER + "\n".join(exports) + "\n")
        built = f"{library}.{os.getpid()}.tmp"
        result = subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread",
                                 "-Wno-unknown-pragmas", "-o", built, source],
                                capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"the CuPy stand-in could not build the kernels:\n{result.stderr}")
        os.replace(built, library)  # atomic: a concurrent run sees the whole file or none


def _launcher(function):
    def launch(grid, block, args):
        values = [ctypes.c_void_p(a.ctypes.data) if isinstance(a, numpy.ndarray)
                  else _CTYPES[a.dtype](a) for a in args]
        pointers = (ctypes.c_void_p * len(values))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        function(ctypes.c_uint(grid[0]), ctypes.c_uint(block[0]), pointers)
    return launch


def check_launch(grid, block, shared_mem):
    """The launch limits a GPU enforces, for the one-dimensional launches minitx makes."""
    if len(grid) != 1 or len(block) != 1 or shared_mem:
        raise NotImplementedError("the stand-in emulates 1-D grids and static shared memory")
    if not 0 < block[0] <= 1024 or not 0 < grid[0] < 2**31:
        raise ValueError(f"invalid launch: grid {grid}, block {block}")
