"""Fused attention on the GPU: flash attention as CUDA C kernels, compiled through cupy.RawModule.

The algorithm of numba_attention, laid out for a GPU. One thread block per (b, h, tile of query
rows), one thread per query row: the thread keeps its q row and output accumulator in registers,
the block streams tiles of k and v through shared memory, and each thread runs the online
softmax (running max m_i, running sum l_i) over the keys its row may see. The backward has two
kernels, so that no two threads ever add into the same gradient: dq (one thread per query row,
streaming k, v tiles) and dk, dv (one thread per key row, streaming q, do tiles of every query
head in the group). Both recompute P = exp(S - lse) from the saved lse.

The kernels are C++ templates over the element type (float, double) and the head size D (so the
row vectors fit in registers); each (dtype, D) pair is compiled on first use and cached. cupy is
imported only then, so this module imports on machines without it. The Python side is written
with the array module of its inputs, so the tests can also run it on numpy arrays with the same
CUDA source built for the CPU (each thread block emulated by threads and a barrier).
"""
import numpy

from ..backend import get_array_module
from ._checks import check_backward, check_forward, kernel_options

SUPPORTED_DTYPES = ("float32", "float64")
ROWS = 64   # rows per thread block: query rows (forward, dq) or key rows (dk, dv), one per thread
KERNEL_NAMES = ("attention_forward", "attention_backward_dq", "attention_backward_dkdv")
_CTYPES = {"float32": "float", "float64": "double"}

CUDA_SOURCE = r"""
// minitx fused attention. T: float or double; D: head size.
// Layouts (all contiguous): q, o, do, dq (B, H, Nq, D); k, v, dk, dv (B, Hkv, Nk, D);
// lse, delta (B, H, Nq); key_mask (B, Nk) as bytes, 1 = may be attended.
// q arrives multiplied by scale, so a score is the plain dot product q_i . k_j.
// Query i sits at absolute position i + (Nk - Nq).

// Keys per shared-memory tile: up to 64, fewer when D is large, so that two tiles of D values
// (k and v, or q and do) plus two scalars per row stay within the 48 KiB of static shared memory.
template <typename T, int D>
struct Tile {
    static constexpr int fit = 24576 / ((D + 1) * (int)sizeof(T));
    static constexpr int len = fit < 64 ? fit : 64;
};

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
__device__ inline void load_tile(T (*tile)[D], const T* src, int r0, int n) {
    for (int t = threadIdx.x; t < n * D; t += blockDim.x)
        tile[t / D][t % D] = src[(size_t)r0 * D + t];
}

// Forward: o = softmax(q k^T) v per query row, and lse = log-sum-exp of the row's scores.
// Grid: B * H * ceil(Nq / blockDim.x) blocks; thread t owns query row i_first + t.
template <typename T, int D>
__global__ void attention_forward(const T* q, const T* k, const T* v,
                                  const unsigned char* key_mask, int H, int Hkv, int Nq, int Nk,
                                  int causal, int window, int prefix, T* o, T* lse) {
    constexpr int TILE = Tile<T, D>::len;
    __shared__ T k_tile[TILE][D];
    __shared__ T v_tile[TILE][D];

    const int n_qtiles = (Nq + blockDim.x - 1) / blockDim.x;
    const int bh = blockIdx.x / n_qtiles;                 // b * H + h
    const int b = bh / H, kv = bh % H / (H / Hkv);
    const int i_first = blockIdx.x % n_qtiles * blockDim.x;
    const int i_last = min(i_first + (int)blockDim.x, Nq) - 1;
    const int i = i_first + threadIdx.x;
    const bool has_row = i < Nq;                          // the last tile may be partial
    const int offset = Nk - Nq;
    const T* k_b = k + (size_t)(b * Hkv + kv) * Nk * D;
    const T* v_b = v + (size_t)(b * Hkv + kv) * Nk * D;
    const unsigned char* mask_b = key_mask + (size_t)b * Nk;

    // 1. this thread's query row into registers; empty running statistics
    T q_i[D], acc[D];
    #pragma unroll
    for (int d = 0; d < D; d++) {
        q_i[d] = has_row ? q[((size_t)bh * Nq + i) * D + d] : T(0);
        acc[d] = 0;
    }
    T m_i = neg_inf<T>(), l_i = 0;

    for (int j0 = 0; j0 < Nk; j0 += TILE) {
        const int n = min(TILE, Nk - j0);
        if (!any_visible(i_first + offset, i_last + offset, j0, j0 + n - 1,
                         causal, window, prefix))
            continue;
        // 2. the block loads a tile of keys and values into shared memory
        __syncthreads();                                  // everyone is done with the last tile
        load_tile<T, D>(k_tile, k_b, j0, n);
        load_tile<T, D>(v_tile, v_b, j0, n);
        __syncthreads();
        if (!has_row) continue;
        // 3. online softmax over the visible keys of the tile, one key at a time
        for (int jj = 0; jj < n; jj++) {
            const int j = j0 + jj;
            if (!mask_b[j] || !visible(i + offset, j, causal, window, prefix)) continue;
            T s = 0;
            #pragma unroll
            for (int d = 0; d < D; d++) s += q_i[d] * k_tile[jj][d];
            if (s > m_i) {                                // new running max: rescale the past
                const T alpha = exp_(m_i - s);            // 0 for the row's first visible key
                l_i *= alpha;
                #pragma unroll
                for (int d = 0; d < D; d++) acc[d] *= alpha;
                m_i = s;
            }
            const T p = exp_(s - m_i);
            l_i += p;
            #pragma unroll
            for (int d = 0; d < D; d++) acc[d] += p * v_tile[jj][d];
        }
    }
    // 4. normalise; a row that sees no key gets o = 0 and lse = -inf
    if (!has_row) return;
    const size_t row = (size_t)bh * Nq + i;
    #pragma unroll
    for (int d = 0; d < D; d++) o[row * D + d] = l_i > 0 ? acc[d] / l_i : T(0);
    lse[row] = l_i > 0 ? m_i + log_(l_i) : neg_inf<T>();
}

// Backward for dq: with P = exp(S - lse), dP = do v^T, dS = P (dP - delta), dq = scale dS k.
// Same grid as the forward; thread t owns query row i_first + t and its dq row.
template <typename T, int D>
__global__ void attention_backward_dq(const T* q, const T* k, const T* v, const T* dout,
                                      const T* lse, const T* delta,
                                      const unsigned char* key_mask, int H, int Hkv, int Nq,
                                      int Nk, int causal, int window, int prefix, T scale,
                                      T* dq) {
    constexpr int TILE = Tile<T, D>::len;
    __shared__ T k_tile[TILE][D];
    __shared__ T v_tile[TILE][D];

    const int n_qtiles = (Nq + blockDim.x - 1) / blockDim.x;
    const int bh = blockIdx.x / n_qtiles;
    const int b = bh / H, kv = bh % H / (H / Hkv);
    const int i_first = blockIdx.x % n_qtiles * blockDim.x;
    const int i_last = min(i_first + (int)blockDim.x, Nq) - 1;
    const int i = i_first + threadIdx.x;
    const size_t row = (size_t)bh * Nq + i;
    const int offset = Nk - Nq;
    const T* k_b = k + (size_t)(b * Hkv + kv) * Nk * D;
    const T* v_b = v + (size_t)(b * Hkv + kv) * Nk * D;
    const unsigned char* mask_b = key_mask + (size_t)b * Nk;

    // 1. this thread's q and do rows, lse and delta into registers
    const bool has_row = i < Nq;
    const T lse_i = has_row ? lse[row] : neg_inf<T>();
    const bool sees_keys = lse_i != neg_inf<T>();        // a row that sees no key: P = 0
    const T delta_i = has_row ? delta[row] : T(0);
    T q_i[D], do_i[D], dq_i[D];
    #pragma unroll
    for (int d = 0; d < D; d++) {
        q_i[d] = has_row ? q[row * D + d] : T(0);
        do_i[d] = has_row ? dout[row * D + d] : T(0);
        dq_i[d] = 0;
    }

    for (int j0 = 0; j0 < Nk; j0 += TILE) {
        const int n = min(TILE, Nk - j0);
        if (!any_visible(i_first + offset, i_last + offset, j0, j0 + n - 1,
                         causal, window, prefix))
            continue;
        // 2. the block loads a tile of keys and values
        __syncthreads();
        load_tile<T, D>(k_tile, k_b, j0, n);
        load_tile<T, D>(v_tile, v_b, j0, n);
        __syncthreads();
        if (!sees_keys) continue;
        // 3. recompute this row's P over the tile and accumulate dS k
        for (int jj = 0; jj < n; jj++) {
            const int j = j0 + jj;
            if (!mask_b[j] || !visible(i + offset, j, causal, window, prefix)) continue;
            T s = 0, dp = 0;
            #pragma unroll
            for (int d = 0; d < D; d++) {
                s += q_i[d] * k_tile[jj][d];
                dp += do_i[d] * v_tile[jj][d];
            }
            const T ds = exp_(s - lse_i) * (dp - delta_i);
            #pragma unroll
            for (int d = 0; d < D; d++) dq_i[d] += ds * k_tile[jj][d];
        }
    }
    // 4. the kernel saw S = (scale q) k^T, so dq picks up the factor scale
    if (!has_row) return;
    #pragma unroll
    for (int d = 0; d < D; d++) dq[row * D + d] = scale * dq_i[d];
}

// Backward for dk, dv: dv = P^T do, dk = dS^T (scale q), summed over the query heads of the
// group. Grid: B * Hkv * ceil(Nk / blockDim.x) blocks; thread t owns key row j_first + t.
template <typename T, int D>
__global__ void attention_backward_dkdv(const T* q, const T* k, const T* v, const T* dout,
                                        const T* lse, const T* delta,
                                        const unsigned char* key_mask, int H, int Hkv, int Nq,
                                        int Nk, int causal, int window, int prefix,
                                        T* dk, T* dv) {
    constexpr int TILE = Tile<T, D>::len;
    __shared__ T q_tile[TILE][D];
    __shared__ T do_tile[TILE][D];
    __shared__ T lse_tile[TILE];
    __shared__ T delta_tile[TILE];

    const int n_ktiles = (Nk + blockDim.x - 1) / blockDim.x;
    const int bkv = blockIdx.x / n_ktiles;                // b * Hkv + kv
    const int b = bkv / Hkv, kv = bkv % Hkv, G = H / Hkv;
    const int j_first = blockIdx.x % n_ktiles * blockDim.x;
    const int j_last = min(j_first + (int)blockDim.x, Nk) - 1;
    const int j = j_first + threadIdx.x;
    const size_t row = (size_t)bkv * Nk + j;
    const int offset = Nk - Nq;

    // 1. this thread's k and v rows into registers; padding keys get no gradient
    const bool has_row = j < Nk;
    const bool attended = has_row && key_mask[(size_t)b * Nk + j];
    T k_j[D], v_j[D], dk_j[D], dv_j[D];
    #pragma unroll
    for (int d = 0; d < D; d++) {
        k_j[d] = has_row ? k[row * D + d] : T(0);
        v_j[d] = has_row ? v[row * D + d] : T(0);
        dk_j[d] = 0;
        dv_j[d] = 0;
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
            load_tile<T, D>(q_tile, q + bh * Nq * D, i0, n);
            load_tile<T, D>(do_tile, dout + bh * Nq * D, i0, n);
            for (int t = threadIdx.x; t < n; t += blockDim.x) {
                lse_tile[t] = lse[bh * Nq + i0 + t];
                delta_tile[t] = delta[bh * Nq + i0 + t];
            }
            __syncthreads();
            if (!attended) continue;
            // 3. recompute P and dS in this key's column and accumulate dv, dk
            for (int ii = 0; ii < n; ii++) {
                if (lse_tile[ii] == neg_inf<T>() ||
                    !visible(i0 + ii + offset, j, causal, window, prefix))
                    continue;
                T s = 0, dp = 0;
                #pragma unroll
                for (int d = 0; d < D; d++) {
                    s += q_tile[ii][d] * k_j[d];
                    dp += do_tile[ii][d] * v_j[d];
                }
                const T p = exp_(s - lse_tile[ii]);
                const T ds = p * (dp - delta_tile[ii]);
                #pragma unroll
                for (int d = 0; d < D; d++) {
                    dv_j[d] += p * do_tile[ii][d];
                    dk_j[d] += ds * q_tile[ii][d];
                }
            }
        }
    }
    // 4. q arrived multiplied by scale, so dk is complete
    if (!has_row) return;
    #pragma unroll
    for (int d = 0; d < D; d++) {
        dk[row * D + d] = dk_j[d];
        dv[row * D + d] = dv_j[d];
    }
}
"""

_kernels = {}   # (dtype name, D) -> {kernel name: cupy.RawKernel}


def name_expressions(dtype_name, d_head):
    """The C++ names of the kernel instances for one dtype and head size."""
    return [f"{name}<{_CTYPES[dtype_name]}, {d_head}>" for name in KERNEL_NAMES]


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


def _launch(kernel, n_rows, n_groups, args):
    """Run `kernel` with one block of ROWS threads per (group, tile of ROWS rows)."""
    n_blocks = n_groups * ((n_rows + ROWS - 1) // ROWS)
    if n_blocks:
        kernel((n_blocks,), (ROWS,), args)


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
    _launch(kernels["attention_forward"], shape.Nq, shape.B * shape.H,
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
    _launch(kernels["attention_backward_dq"], shape.Nq, shape.B * shape.H,
            inputs + (scale, dq))
    _launch(kernels["attention_backward_dkdv"], shape.Nk, shape.B * shape.Hkv,
            inputs + (dk, dv))
    return dq, dk, dv
