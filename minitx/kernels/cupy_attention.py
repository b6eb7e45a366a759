"""Fused attention on the GPU: flash attention as CUDA C kernels, compiled through cupy.RawModule.

The algorithm of numba_attention, laid out for a GPU. A thread block owns a tile of ROWS rows of
one (b, h): query rows in the forward and dq kernels, key rows in the dk, dv kernel. LANES
threads share each row, lane l holding the row's values d = l, l + LANES, ... of its output
(or gradient) accumulator, so per-thread state stays small at any head size D. The block streams
tiles of TILE rows of the other side (keys and values, or queries and output gradients) through
shared memory, in three steps per tile: the lanes of a row share out the tile's score dot
products into a shared score tile; the block meets at a barrier; each lane then folds the row's
scores into its part of the accumulator (online softmax with running max m_i and sum l_i in the
forward). The backward has two kernels, so that no two threads ever add into the same gradient:
dq (blocks of query rows, streaming k, v) and dk, dv (blocks of key rows, streaming q, do of
every query head in the group). Both recompute P = exp(S - lse) from the saved lse.

The kernels are C++ templates over the element type, D and the tiling (`tiling` picks ROWS and
TILE so that shared memory stays within SHARED_BUDGET); each (dtype, D) is compiled on first use
and cached. cupy is imported only then, so this module imports on machines without it. The
tests run this same source on the CPU through the CuPy stand-in (tests/cupy_standin), and
compile it for sm_90 through NVRTC to check registers, spills and occupancy
(tests/test_kernel_resources.py).
"""
import numpy

from ..backend import get_array_module
from ._checks import check_backward, check_forward, kernel_options

SUPPORTED_DTYPES = ("float32", "float64")
THREADS = 128              # threads per block: ROWS rows x LANES threads per row
SHARED_BUDGET = 40 * 1024  # static shared memory per block: under the 48 KiB limit, and small
                           # enough that 4 blocks (16 warps, 25 % occupancy) fit on an H100 SM
KERNEL_NAMES = ("attention_forward", "attention_backward_dq", "attention_backward_dkdv")
_CTYPES = {"float32": "float", "float64": "double"}


def tiling(dtype_name, d_head):
    """(ROWS, LANES, TILE) for one dtype and head size D: the largest tiles whose shared memory
    (the dk, dv kernel's, the largest: 2 ROWS x D own rows, 2 TILE x D streamed rows, two
    ROWS x TILE score tiles, 2 TILE scalars) fits SHARED_BUDGET. TILE shrinks first (it only sets
    how often the block meets), then ROWS (how many rows share each streamed tile)."""
    size = numpy.dtype(dtype_name).itemsize
    rows, tile = 32, 32
    while (2 * rows * d_head + 2 * tile * d_head + 2 * rows * tile + 2 * tile) * size \
            > SHARED_BUDGET:
        if tile > 16:
            tile //= 2
        elif rows > 8:
            rows //= 2
        else:
            tile //= 2
    return rows, THREADS // rows, tile


CUDA_SOURCE = r"""
// minitx fused attention. T: float or double; D: head size; a block of ROWS x LANES threads owns
// ROWS rows (LANES threads per row) and streams tiles of TILE rows of the other side.
// Layouts (all contiguous): q, o, do, dq (B, H, Nq, D); k, v, dk, dv (B, Hkv, Nk, D);
// lse, delta (B, H, Nq); key_mask (B, Nk) as bytes, 1 = may be attended.
// q arrives multiplied by scale, so a score is the plain dot product q_i . k_j.
// Query i sits at absolute position i + (Nk - Nq).
// Every thread runs every loop iteration that contains a __syncthreads() (threads without a
// row compute nothing and write nothing), so the barriers are always reached by the whole block.

template <typename T> __device__ inline T neg_inf();
template <> __device__ inline float neg_inf<float>() { return __int_as_float(0xff800000); }
template <> __device__ inline double neg_inf<double>() {
    return __longlong_as_double(0xfff0000000000000LL);
}
__device__ inline float exp_(float x) { return expf(x); }
__device__ inline double exp_(double x) { return exp(x); }
__device__ inline float log_(float x) { return logf(x); }
__device__ inline double log_(double x) { return log(x); }

// May the query at absolute position pos see key j? (key padding is checked apart)
__device__ inline bool visible(int pos, int j, int causal, int window, int prefix) {
    return !causal || j < prefix || (pos - window < j && j <= pos);
}

// Does any query with position in [pos_first, pos_last] see any key in [j_first, j_last]?
// The same answer for every thread of a block, so a whole tile can be skipped together.
__device__ inline bool any_visible(int pos_first, int pos_last, int j_first, int j_last,
                                   int causal, int window, int prefix) {
    return !causal || j_first < prefix || (j_first <= pos_last && j_last > pos_first - window);
}

// Copy rows [r0, r0 + n) of a (rows, D) matrix into a shared tile, all threads together.
template <typename T, int D>
__device__ inline void load_rows(T (*tile)[D], const T* src, int r0, int n) {
    for (int t = threadIdx.x; t < n * D; t += blockDim.x)
        tile[t / D][t % D] = src[(size_t)r0 * D + t];
}

template <typename T, int D>
__device__ inline T dot(const T* a, const T* b) {
    T s = 0;
    #pragma unroll 8
    for (int d = 0; d < D; d++) s += a[d] * b[d];
    return s;
}

// Forward: o = softmax(q k^T) v per query row, and lse = log-sum-exp of the row's scores.
// Grid: B * H * ceil(Nq / ROWS) blocks; thread (r, lane) works on query row i_first + r.
template <typename T, int D, int ROWS, int LANES, int TILE>
__global__ void attention_forward(const T* q, const T* k, const T* v,
                                  const unsigned char* key_mask, int H, int Hkv, int Nq, int Nk,
                                  int causal, int window, int prefix, T* o, T* lse) {
    constexpr int DL = (D + LANES - 1) / LANES;           // accumulator values per thread
    __shared__ T q_tile[ROWS][D];
    __shared__ T k_tile[TILE][D];
    __shared__ T v_tile[TILE][D];
    __shared__ T s_tile[ROWS][TILE];                      // the rows' scores over the key tile

    const int n_qtiles = (Nq + ROWS - 1) / ROWS;
    const int bh = blockIdx.x / n_qtiles;                 // b * H + h
    const int b = bh / H, kv = bh % H / (H / Hkv);
    const int i_first = blockIdx.x % n_qtiles * ROWS;
    const int i_last = min(i_first + ROWS, Nq) - 1;       // the last tile may be partial
    const int r = threadIdx.x / LANES, lane = threadIdx.x % LANES;
    const int i = i_first + r;
    const bool has_row = i < Nq;
    const int offset = Nk - Nq;
    const T* k_b = k + (size_t)(b * Hkv + kv) * Nk * D;
    const T* v_b = v + (size_t)(b * Hkv + kv) * Nk * D;
    const unsigned char* mask_b = key_mask + (size_t)b * Nk;

    // 1. the block's query rows into shared memory; empty running statistics
    load_rows<T, D>(q_tile, q + (size_t)bh * Nq * D, i_first, i_last - i_first + 1);
    T acc[DL];
    #pragma unroll
    for (int t = 0; t < DL; t++) acc[t] = 0;
    T m_i = neg_inf<T>(), l_i = 0;

    for (int j0 = 0; j0 < Nk; j0 += TILE) {
        const int n = min(TILE, Nk - j0);
        if (!any_visible(i_first + offset, i_last + offset, j0, j0 + n - 1,
                         causal, window, prefix))
            continue;
        // 2. the block loads a tile of keys and values
        __syncthreads();                                  // everyone is done with the last tile
        load_rows<T, D>(k_tile, k_b, j0, n);
        load_rows<T, D>(v_tile, v_b, j0, n);
        __syncthreads();
        // 3. the lanes of row r share out its scores over the tile; hidden keys score -inf
        for (int jj = lane; jj < n; jj += LANES) {
            const int j = j0 + jj;
            s_tile[r][jj] = has_row && mask_b[j] && visible(i + offset, j, causal, window, prefix)
                            ? dot<T, D>(q_tile[r], k_tile[jj]) : neg_inf<T>();
        }
        __syncthreads();
        // 4. online softmax over the tile: every lane keeps the row's m_i, l_i, and its own
        //    part of the accumulator
        T m_new = m_i;
        for (int jj = 0; jj < n; jj++) m_new = s_tile[r][jj] > m_new ? s_tile[r][jj] : m_new;
        if (m_new == neg_inf<T>()) continue;              // no visible key yet
        const T alpha = exp_(m_i - m_new);                // 0 while m_i is -inf
        l_i *= alpha;
        #pragma unroll
        for (int t = 0; t < DL; t++) acc[t] *= alpha;
        for (int jj = 0; jj < n; jj++) {
            const T p = exp_(s_tile[r][jj] - m_new);      // 0 for hidden keys
            l_i += p;
            #pragma unroll
            for (int t = 0; t < DL; t++)
                if (lane + t * LANES < D) acc[t] += p * v_tile[jj][lane + t * LANES];
        }
        m_i = m_new;
    }
    // 5. normalise; a row that sees no key gets o = 0 and lse = -inf
    if (!has_row) return;
    const size_t row = (size_t)bh * Nq + i;
    #pragma unroll
    for (int t = 0; t < DL; t++)
        if (lane + t * LANES < D)
            o[row * D + lane + t * LANES] = l_i > 0 ? acc[t] / l_i : T(0);
    if (lane == 0) lse[row] = l_i > 0 ? m_i + log_(l_i) : neg_inf<T>();
}

// Backward for dq: with P = exp(S - lse), dP = do v^T, dS = P (dP - delta), dq = scale dS k.
// Same grid and rows as the forward.
template <typename T, int D, int ROWS, int LANES, int TILE>
__global__ void attention_backward_dq(const T* q, const T* k, const T* v, const T* dout,
                                      const T* lse, const T* delta,
                                      const unsigned char* key_mask, int H, int Hkv, int Nq,
                                      int Nk, int causal, int window, int prefix, T scale,
                                      T* dq) {
    constexpr int DL = (D + LANES - 1) / LANES;
    __shared__ T q_tile[ROWS][D];
    __shared__ T do_tile[ROWS][D];
    __shared__ T k_tile[TILE][D];
    __shared__ T v_tile[TILE][D];
    __shared__ T ds_tile[ROWS][TILE];                     // dS of the rows over the key tile

    const int n_qtiles = (Nq + ROWS - 1) / ROWS;
    const int bh = blockIdx.x / n_qtiles;
    const int b = bh / H, kv = bh % H / (H / Hkv);
    const int i_first = blockIdx.x % n_qtiles * ROWS;
    const int i_last = min(i_first + ROWS, Nq) - 1;
    const int r = threadIdx.x / LANES, lane = threadIdx.x % LANES;
    const int i = i_first + r;
    const size_t row = (size_t)bh * Nq + i;
    const int offset = Nk - Nq;
    const T* k_b = k + (size_t)(b * Hkv + kv) * Nk * D;
    const T* v_b = v + (size_t)(b * Hkv + kv) * Nk * D;
    const unsigned char* mask_b = key_mask + (size_t)b * Nk;

    // 1. the block's q and do rows into shared memory; this row's lse and delta
    load_rows<T, D>(q_tile, q + (size_t)bh * Nq * D, i_first, i_last - i_first + 1);
    load_rows<T, D>(do_tile, dout + (size_t)bh * Nq * D, i_first, i_last - i_first + 1);
    const bool has_row = i < Nq;
    const T lse_i = has_row ? lse[row] : neg_inf<T>();
    const bool sees_keys = lse_i != neg_inf<T>();        // a row that sees no key: P = 0
    const T delta_i = has_row ? delta[row] : T(0);
    T dq_i[DL];
    #pragma unroll
    for (int t = 0; t < DL; t++) dq_i[t] = 0;

    for (int j0 = 0; j0 < Nk; j0 += TILE) {
        const int n = min(TILE, Nk - j0);
        if (!any_visible(i_first + offset, i_last + offset, j0, j0 + n - 1,
                         causal, window, prefix))
            continue;
        // 2. the block loads a tile of keys and values
        __syncthreads();
        load_rows<T, D>(k_tile, k_b, j0, n);
        load_rows<T, D>(v_tile, v_b, j0, n);
        __syncthreads();
        // 3. the lanes of row r share out dS over the tile (0 for hidden keys)
        for (int jj = lane; jj < n; jj += LANES) {
            const int j = j0 + jj;
            T ds = 0;
            if (sees_keys && mask_b[j] && visible(i + offset, j, causal, window, prefix))
                ds = exp_(dot<T, D>(q_tile[r], k_tile[jj]) - lse_i)
                     * (dot<T, D>(do_tile[r], v_tile[jj]) - delta_i);
            ds_tile[r][jj] = ds;
        }
        __syncthreads();
        // 4. dq += dS k, each lane for its part of the row
        for (int jj = 0; jj < n; jj++) {
            const T ds = ds_tile[r][jj];
            #pragma unroll
            for (int t = 0; t < DL; t++)
                if (lane + t * LANES < D) dq_i[t] += ds * k_tile[jj][lane + t * LANES];
        }
    }
    // 5. the kernel saw S = (scale q) k^T, so dq picks up the factor scale
    if (!has_row) return;
    #pragma unroll
    for (int t = 0; t < DL; t++)
        if (lane + t * LANES < D) dq[row * D + lane + t * LANES] = scale * dq_i[t];
}

// Backward for dk, dv: dv = P^T do, dk = dS^T (scale q), summed over the query heads of the
// group. Grid: B * Hkv * ceil(Nk / ROWS) blocks; thread (r, lane) works on key row j_first + r.
template <typename T, int D, int ROWS, int LANES, int TILE>
__global__ void attention_backward_dkdv(const T* q, const T* k, const T* v, const T* dout,
                                        const T* lse, const T* delta,
                                        const unsigned char* key_mask, int H, int Hkv, int Nq,
                                        int Nk, int causal, int window, int prefix,
                                        T* dk, T* dv) {
    constexpr int DL = (D + LANES - 1) / LANES;
    __shared__ T k_tile[ROWS][D];
    __shared__ T v_tile[ROWS][D];
    __shared__ T q_tile[TILE][D];
    __shared__ T do_tile[TILE][D];
    __shared__ T lse_tile[TILE];
    __shared__ T delta_tile[TILE];
    __shared__ T p_tile[ROWS][TILE];                      // P and dS of the key rows over the
    __shared__ T ds_tile[ROWS][TILE];                     // query tile

    const int n_ktiles = (Nk + ROWS - 1) / ROWS;
    const int bkv = blockIdx.x / n_ktiles;                // b * Hkv + kv
    const int b = bkv / Hkv, kv = bkv % Hkv, G = H / Hkv;
    const int j_first = blockIdx.x % n_ktiles * ROWS;
    const int j_last = min(j_first + ROWS, Nk) - 1;
    const int r = threadIdx.x / LANES, lane = threadIdx.x % LANES;
    const int j = j_first + r;
    const size_t row = (size_t)bkv * Nk + j;
    const int offset = Nk - Nq;

    // 1. the block's k and v rows into shared memory; padding keys get no gradient
    load_rows<T, D>(k_tile, k + (size_t)bkv * Nk * D, j_first, j_last - j_first + 1);
    load_rows<T, D>(v_tile, v + (size_t)bkv * Nk * D, j_first, j_last - j_first + 1);
    const bool has_row = j < Nk;
    const bool attended = has_row && key_mask[(size_t)b * Nk + j];
    T dk_j[DL], dv_j[DL];
    #pragma unroll
    for (int t = 0; t < DL; t++) {
        dk_j[t] = 0;
        dv_j[t] = 0;
    }

    for (int h = kv * G; h < (kv + 1) * G; h++) {
        const size_t bh = (size_t)b * H + h;
        for (int i0 = 0; i0 < Nq; i0 += TILE) {
            const int n = min(TILE, Nq - i0);
            if (!any_visible(i0 + offset, i0 + n - 1 + offset, j_first, j_last,
                             causal, window, prefix))
                continue;
            // 2. the block loads a tile of query rows of head h: q, do, lse, delta
            __syncthreads();
            load_rows<T, D>(q_tile, q + bh * Nq * D, i0, n);
            load_rows<T, D>(do_tile, dout + bh * Nq * D, i0, n);
            for (int t = threadIdx.x; t < n; t += blockDim.x) {
                lse_tile[t] = lse[bh * Nq + i0 + t];
                delta_tile[t] = delta[bh * Nq + i0 + t];
            }
            __syncthreads();
            // 3. the lanes of key row r share out P and dS in its column of the tile
            for (int ii = lane; ii < n; ii += LANES) {
                T p = 0, ds = 0;
                if (attended && lse_tile[ii] != neg_inf<T>() &&
                    visible(i0 + ii + offset, j, causal, window, prefix)) {
                    p = exp_(dot<T, D>(q_tile[ii], k_tile[r]) - lse_tile[ii]);
                    ds = p * (dot<T, D>(do_tile[ii], v_tile[r]) - delta_tile[ii]);
                }
                p_tile[r][ii] = p;
                ds_tile[r][ii] = ds;
            }
            __syncthreads();
            // 4. dv += P^T do, dk += dS^T q, each lane for its part of the row
            for (int ii = 0; ii < n; ii++) {
                const T p = p_tile[r][ii], ds = ds_tile[r][ii];
                #pragma unroll
                for (int t = 0; t < DL; t++) {
                    if (lane + t * LANES >= D) continue;
                    dv_j[t] += p * do_tile[ii][lane + t * LANES];
                    dk_j[t] += ds * q_tile[ii][lane + t * LANES];
                }
            }
        }
    }
    // 5. q arrived multiplied by scale, so dk is complete
    if (!has_row) return;
    #pragma unroll
    for (int t = 0; t < DL; t++) {
        if (lane + t * LANES >= D) continue;
        dk[row * D + lane + t * LANES] = dk_j[t];
        dv[row * D + lane + t * LANES] = dv_j[t];
    }
}
"""

_kernels = {}   # (dtype name, D) -> {kernel name: cupy.RawKernel}


def name_expressions(dtype_name, d_head):
    """The C++ names of the kernel instances for one dtype and head size."""
    rows, lanes, tile = tiling(dtype_name, d_head)
    return [f"{name}<{_CTYPES[dtype_name]}, {d_head}, {rows}, {lanes}, {tile}>"
            for name in KERNEL_NAMES]


def compiled_kernels(dtype, d_head):
    """{kernel name: kernel} for (dtype, D), compiled by NVRTC on first use. A kernel is called
    as kernel(grid, block, args), args in the order of the CUDA parameters."""
    import cupy
    key = (dtype.name, d_head)
    if key not in _kernels:
        names = name_expressions(dtype.name, d_head)
        module = cupy.RawModule(code=CUDA_SOURCE, options=("-std=c++17",),
                                name_expressions=names)
        _kernels[key] = {kernel: module.get_function(name)
                         for kernel, name in zip(KERNEL_NAMES, names)}
    return _kernels[key]


def _prepare(xp, q, shape, key_mask, causal, window, prefix):
    """q * scale, scale, the key mask and the int arguments shared by all three kernels."""
    if q.dtype.name not in SUPPORTED_DTYPES:
        raise ValueError(f"the CUDA attention kernels support {SUPPORTED_DTYPES}, got {q.dtype}")
    mask, causal, window, prefix = kernel_options(shape, key_mask, causal, window, prefix, xp)
    ints = tuple(numpy.int32(x) for x in (shape.H, shape.Hkv, shape.Nq, shape.Nk,
                                           causal, window, prefix))
    scale = q.dtype.type(shape.scale)
    return xp.ascontiguousarray(q * scale), scale, mask, ints


def _launch(kernel, rows, n_rows, n_groups, args):
    """Run `kernel` with one block of THREADS threads per (group, tile of `rows` rows)."""
    n_blocks = n_groups * ((n_rows + rows - 1) // rows)
    if n_blocks:
        kernel((n_blocks,), (THREADS,), args)


def attention_forward(q, k, v, *, causal=False, key_mask=None, window=None, prefix=None,
                      scale=None):
    """Fused forward on cupy arrays: (o (B, H, Nq, D), lse (B, H, Nq))."""
    shape = check_forward(q, k, v, causal=causal, key_mask=key_mask, window=window,
                          prefix=prefix, scale=scale)
    xp = get_array_module(q, k, v)
    q, _, mask, ints = _prepare(xp, q, shape, key_mask, causal, window, prefix)
    k, v = xp.ascontiguousarray(k), xp.ascontiguousarray(v)
    o = xp.empty_like(q)
    lse = xp.empty(q.shape[:3], q.dtype)
    kernels = compiled_kernels(q.dtype, shape.D)
    rows = tiling(q.dtype.name, shape.D)[0]
    _launch(kernels["attention_forward"], rows, shape.Nq, shape.B * shape.H,
            (q, k, v, mask) + ints + (o, lse))
    return o, lse


def attention_backward(q, k, v, o, lse, do, *, causal=False, key_mask=None, window=None,
                       prefix=None, scale=None):
    """Fused backward on cupy arrays: (dq, dk, dv)."""
    shape = check_backward(q, k, v, o, lse, do, causal=causal, key_mask=key_mask,
                           window=window, prefix=prefix, scale=scale)
    xp = get_array_module(q, k, v, o, lse, do)
    q, scale, mask, ints = _prepare(xp, q, shape, key_mask, causal, window, prefix)
    k, v = xp.ascontiguousarray(k), xp.ascontiguousarray(v)
    o, lse, do = (xp.ascontiguousarray(x, dtype=q.dtype) for x in (o, lse, do))
    delta = (do * o).sum(axis=-1)                            # rowsum(do * o): (B, H, Nq)
    dq = xp.empty_like(q)
    dk = xp.empty_like(k)
    dv = xp.empty_like(v)
    inputs = (q, k, v, do, lse, delta, mask) + ints
    kernels = compiled_kernels(q.dtype, shape.D)
    rows = tiling(q.dtype.name, shape.D)[0]
    _launch(kernels["attention_backward_dq"], rows, shape.Nq, shape.B * shape.H,
            inputs + (scale, dq))
    _launch(kernels["attention_backward_dkdv"], rows, shape.Nk, shape.B * shape.Hkv,
            inputs + (dk, dv))
    return dq, dk, dv
