"""What the CUDA attention kernels ask of an H100, measured without a GPU.

NVRTC from pip (the nvidia-cuda-nvrtc-cu12 wheel) compiles the kernel source for sm_90 and its
ptxas reports, per kernel instance, the registers per thread, the bytes spilled to local memory
and the static shared memory. From those and the block size follows the theoretical occupancy:
the share of an SM's 64 warp slots that resident blocks can fill.

    python tests/test_kernel_resources.py     # prints the table kept in benchmarks/RESULTS.md
"""
import ctypes
import glob
import os
import re

import pytest

from minitx.kernels import cupy_attention

HEAD_SIZES = (32, 64, 128)
SHARED_LIMIT = 48 * 1024     # static shared memory a kernel may declare without opting in
# sm_90 (H100) per-SM limits (CUDA occupancy calculator): 64 warps, 32 blocks, 64K registers
# allocated per warp in units of 256, 228 KiB shared memory of which each block reserves 1 KiB.
SM = dict(warps=64, blocks=32, registers=65536, register_unit=256, shared=228 * 1024,
          shared_reserved=1024)


def _nvrtc():
    """libnvrtc from the nvidia-cuda-nvrtc-cu12 wheel, or None where the wheel is missing."""
    try:
        import nvidia.cuda_nvrtc
    except ImportError:
        return None
    for folder in nvidia.cuda_nvrtc.__path__:
        found = glob.glob(os.path.join(folder, "lib", "libnvrtc.so.*[0-9]"))
        if found:
            return ctypes.CDLL(sorted(found)[0])
    return None


def ptxas_report(source, names, arch="sm_90"):
    """{C++ name: {"registers", "spill_bytes", "shared_bytes"}} for each instance in `names`."""
    lib = _nvrtc()
    program = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), b"attention.cu",
                                  0, None, None) == 0
    for name in names:
        assert lib.nvrtcAddNameExpression(program, name.encode()) == 0
    options = [b"-std=c++17", f"--gpu-architecture={arch}".encode(), b"-Xptxas=-v"]
    status = lib.nvrtcCompileProgram(program, len(options),
                                     (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(program, log)
    log = log.value.decode()
    assert status == 0, log
    report = {}
    for name in names:
        lowered = ctypes.c_char_p()
        lib.nvrtcGetLoweredName(program, name.encode(), ctypes.byref(lowered))
        # ptxas prints, per entry: "Function properties for <mangled>" / "... N bytes spill
        # stores ..." / "Used R registers, ... S bytes smem"
        entry = log.split(f"Function properties for {lowered.value.decode()}\n")[1]
        entry = entry.split("Compile time")[0]
        report[name] = dict(
            registers=int(re.search(r"Used (\d+) registers", entry).group(1)),
            spill_bytes=int(re.search(r"(\d+) bytes spill stores", entry).group(1)),
            shared_bytes=int(m.group(1)) if (m := re.search(r"(\d+) bytes smem", entry)) else 0)
    lib.nvrtcDestroyProgram(ctypes.byref(program))
    return report


def occupancy(registers, shared_bytes, threads):
    """Theoretical occupancy on sm_90: resident warps / 64, from the three per-SM limits."""
    warps = -(-threads // 32)
    per_warp = -(-registers * 32 // SM["register_unit"]) * SM["register_unit"]
    blocks = min(SM["blocks"],
                 SM["registers"] // per_warp // warps,
                 SM["shared"] // (shared_bytes + SM["shared_reserved"]),
                 SM["warps"] // warps)
    return blocks * warps / SM["warps"]


def kernel_table():
    """Rows (kernel, dtype, D, threads, registers, spill bytes, shared bytes, occupancy)."""
    rows = []
    for dtype in cupy_attention.SUPPORTED_DTYPES:
        for d_head in HEAD_SIZES:
            names = cupy_attention.name_expressions(dtype, d_head)
            threads = cupy_attention.THREADS
            for kernel, (name, r) in zip(cupy_attention.KERNEL_NAMES,
                                         ptxas_report(cupy_attention.CUDA_SOURCE, names).items()):
                rows.append((kernel, dtype, d_head, threads, r["registers"], r["spill_bytes"],
                             r["shared_bytes"],
                             occupancy(r["registers"], r["shared_bytes"], threads)))
    return rows


@pytest.fixture(scope="module")
def table():
    if _nvrtc() is None:
        pytest.skip("needs NVRTC from pip: pip install nvidia-cuda-nvrtc-cu12 "
                    "(part of the test extra)")
    return kernel_table()


def test_every_instance_fits_shared_memory(table):
    assert len(table) == 3 * len(cupy_attention.SUPPORTED_DTYPES) * len(HEAD_SIZES)
    for kernel, dtype, d_head, _, _, _, shared, _ in table:
        assert 0 < shared <= SHARED_LIMIT, f"{kernel} {dtype} D={d_head}: {shared} B shared"


def test_no_spills_for_float32_up_to_d64(table):
    for kernel, dtype, d_head, _, registers, spills, _, _ in table:
        if dtype == "float32" and d_head <= 64:
            assert spills == 0, f"{kernel} D={d_head}: {registers} registers, {spills} B spilled"


def test_occupancy_at_least_a_quarter(table):
    for kernel, dtype, d_head, _, registers, _, shared, occ in table:
        assert occ >= 0.25, (f"{kernel} {dtype} D={d_head}: {occ:.1%} "
                             f"({registers} registers, {shared} B shared)")


def test_occupancy_arithmetic():
    """The calculator against hand-worked cases: 255 registers x 64 threads leave room for 4
    blocks (8 warps, 12.5 %); 32 registers x 128 threads hit the 64-warp limit."""
    assert occupancy(255, 32768, 64) == 8 / 64
    assert occupancy(32, 1024, 128) == 1.0
    assert occupancy(32, 47 * 1024, 128) == 4 * 4 / 64     # 228 KiB / 48 KiB: 4 blocks


if __name__ == "__main__":
    print("| kernel | dtype | D | threads | registers | spills (B) | smem (B) | occupancy |")
    print("|---|---|---|---|---|---|---|---|")
    for row in kernel_table():
        print("| {} | {} | {} | {} | {} | {} | {} | {:.1%} |".format(*row))
