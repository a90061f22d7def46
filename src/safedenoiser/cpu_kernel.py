"""One-pass CPU kernel: the streamed kernel moments fused into a compiled loop (numba).

The torch formulation in :mod:`safedenoiser.kernels` reads every chunk twice (logits, then the weighted
sum) and pays a dozen dispatches per chunk. Here each block of R rows (R x D floats, a quarter of the L2
cache) is read from memory once: the logits of the block for all queries, the online log-sum-exp update,
and the weighted sum are computed while the block sits in cache. Per row and query it does 2 D multiply-adds,
so at B queries the loop needs 2 B multiply-adds per float read: at B = 1 it runs at memory speed, at B = 8
it is bound by the core's multiply-add rate (see the benchmark's roofline column).

Blocks are merged into a float64 running state every ``SUPERBLOCK`` rows (the float32 sums stay short),
and ``threads`` shards of the set run in parallel (the compiled loop releases the GIL); each shard's moments come
back as plain float64 arrays, merged by :func:`~safedenoiser.kernels.combine_moments` (this module is a leaf: it
imports nothing from the package). Only float32 compute on CPU tensors goes through here; everything else uses the
torch path.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

try:
    import numba
except ImportError:  # pragma: no cover - numba is a declared dependency; the torch path still works without it
    numba = None

SUPERBLOCK = 4096
L2_BLOCK_BYTES = 128 << 10
MIN_FLOATS_PER_THREAD = 1 << 22


def available() -> bool:
    """True when numba is importable (the fused CPU kernel can run)."""
    return numba is not None


def block_rows(dim: int) -> int:
    """Rows per cache block: about 128 KiB of float32 points, a multiple of 4, at least 4."""
    return max(4, (L2_BLOCK_BYTES // (4 * dim)) // 4 * 4)


if numba is not None:
    _fast = {"contract", "reassoc", "arcp", "nsz", "afn"}  # no 'nnan' / 'ninf': the running max starts at -inf
    _jit = numba.njit(fastmath=_fast, nogil=True, cache=True, boundscheck=False, error_model="numpy")

    _inline = numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")

    @_inline
    def _four_rows(pts, row):
        """Views of rows row ... row + 3."""
        return pts[row], pts[row + 1], pts[row + 2], pts[row + 3]

    @_inline
    def _four_weights(w, query, col):
        """w[query, col ... col + 3]."""
        return w[query, col], w[query, col + 1], w[query, col + 2], w[query, col + 3]

    @_jit
    def _block_dots(x, pts, r0, n, out):
        """out[b, j] = x_b . p_{r0+j} for j < n: tiles of 4 rows x 2 queries (8 running sums)."""
        batch, dim = x.shape
        full = n - n % 4
        for j in range(0, full, 4):
            p0, p1, p2, p3 = _four_rows(pts, r0 + j)
            for g in range(0, batch - batch % 2, 2):
                x0 = x[g]
                x1 = x[g + 1]
                a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
                for d in range(dim):
                    u = x0[d]
                    v = x1[d]
                    a0 += u * p0[d]
                    a1 += u * p1[d]
                    a2 += u * p2[d]
                    a3 += u * p3[d]
                    b0 += v * p0[d]
                    b1 += v * p1[d]
                    b2 += v * p2[d]
                    b3 += v * p3[d]
                out[g, j], out[g, j + 1], out[g, j + 2], out[g, j + 3] = a0, a1, a2, a3
                out[g + 1, j], out[g + 1, j + 1], out[g + 1, j + 2], out[g + 1, j + 3] = b0, b1, b2, b3
            if batch % 2:
                x0 = x[batch - 1]
                a0 = a1 = a2 = a3 = np.float32(0.0)
                for d in range(dim):
                    u = x0[d]
                    a0 += u * p0[d]
                    a1 += u * p1[d]
                    a2 += u * p2[d]
                    a3 += u * p3[d]
                out[batch - 1, j], out[batch - 1, j + 1], out[batch - 1, j + 2], out[batch - 1, j + 3] = a0, a1, a2, a3
        for j in range(full, n):
            p0 = pts[r0 + j]
            for g in range(batch):
                x0 = x[g]
                a0 = np.float32(0.0)
                for d in range(dim):
                    a0 += x0[d] * p0[d]
                out[g, j] = a0

    @_jit
    def _block_accumulate(w, pts, r0, n, acc):
        """acc_b += sum_{j<n} w[b, j] p_{r0+j}: tiles of 4 queries x 4 rows; all-zero tiles are skipped
        (weights that underflowed contribute exactly nothing)."""
        batch, dim = acc.shape
        full = n - n % 4
        for g in range(0, batch - batch % 4, 4):
            a0 = acc[g]
            a1 = acc[g + 1]
            a2 = acc[g + 2]
            a3 = acc[g + 3]
            for j in range(0, full, 4):
                w00, w01, w02, w03 = _four_weights(w, g, j)
                w10, w11, w12, w13 = _four_weights(w, g + 1, j)
                w20, w21, w22, w23 = _four_weights(w, g + 2, j)
                w30, w31, w32, w33 = _four_weights(w, g + 3, j)
                if (w00 + w01 + w02 + w03 + w10 + w11 + w12 + w13 + w20 + w21 + w22 + w23
                        + w30 + w31 + w32 + w33) == 0.0:
                    continue
                p0, p1, p2, p3 = _four_rows(pts, r0 + j)
                for d in range(dim):
                    u0 = p0[d]
                    u1 = p1[d]
                    u2 = p2[d]
                    u3 = p3[d]
                    a0[d] += w00 * u0 + w01 * u1 + w02 * u2 + w03 * u3
                    a1[d] += w10 * u0 + w11 * u1 + w12 * u2 + w13 * u3
                    a2[d] += w20 * u0 + w21 * u1 + w22 * u2 + w23 * u3
                    a3[d] += w30 * u0 + w31 * u1 + w32 * u2 + w33 * u3
            for j in range(full, n):
                p0 = pts[r0 + j]
                w00, w10, w20, w30 = w[g, j], w[g + 1, j], w[g + 2, j], w[g + 3, j]
                for d in range(dim):
                    u0 = p0[d]
                    a0[d] += w00 * u0
                    a1[d] += w10 * u0
                    a2[d] += w20 * u0
                    a3[d] += w30 * u0
        for g in range(batch - batch % 4, batch):
            a0 = acc[g]
            for j in range(0, full, 4):
                w0, w1, w2, w3 = _four_weights(w, g, j)
                if w0 + w1 + w2 + w3 == 0.0:
                    continue
                p0, p1, p2, p3 = _four_rows(pts, r0 + j)
                for d in range(dim):
                    a0[d] += w0 * p0[d] + w1 * p1[d] + w2 * p2[d] + w3 * p3[d]
            for j in range(full, n):
                p0 = pts[r0 + j]
                w0 = w[g, j]
                for d in range(dim):
                    a0[d] += w0 * p0[d]

    @_jit
    def _superblock(x, x_sq, inv, pts, sq, start, stop, rows, euclidean, with_mean, logits, acc, run_max, run_sum):
        """Online log-sum-exp over rows [start, stop) in float32 from a fresh state (acc, run_max, run_sum)."""
        batch, dim = x.shape
        for r0 in range(start, stop, rows):
            n = min(rows, stop - r0)
            _block_dots(x, pts, r0, n, logits)
            for b in range(batch):
                best = -np.inf
                for j in range(n):
                    if euclidean:
                        dist_sq = max(x_sq[b] + sq[r0 + j] - np.float32(2.0) * logits[b, j], np.float32(0.0))
                        value = -np.float32(0.5) * inv[b] * np.sqrt(dist_sq)
                    else:
                        value = (logits[b, j] - np.float32(0.5) * sq[r0 + j]) * inv[b]
                    logits[b, j] = value
                    best = max(best, value)
                if best > run_max[b]:
                    scale = np.float32(math.exp(run_max[b] - best))  # 0 on the first block
                    run_sum[b] *= scale
                    if with_mean:
                        for d in range(dim):
                            acc[b, d] *= scale
                    run_max[b] = best
                total = np.float32(0.0)
                for j in range(n):
                    weight = np.float32(math.exp(logits[b, j] - run_max[b]))
                    logits[b, j] = weight
                    total += weight
                run_sum[b] += total
            if with_mean:
                _block_accumulate(logits, pts, r0, n, acc)

    @_jit
    def _shard(x, x_sq, inv, pts, sq, start, stop, rows, euclidean, with_mean, out_acc, out_max, out_sum):
        """Rows [start, stop) in superblocks of float32 work merged into a float64 state (out_*), in place."""
        batch, dim = x.shape
        logits = np.empty((batch, rows), dtype=np.float32)
        acc = np.empty((batch, dim), dtype=np.float32)
        run_max = np.empty(batch, dtype=np.float32)
        run_sum = np.empty(batch, dtype=np.float32)
        for s0 in range(start, stop, SUPERBLOCK):
            acc[:] = 0.0
            run_max[:] = -np.inf
            run_sum[:] = 0.0
            _superblock(x, x_sq, inv, pts, sq, s0, min(stop, s0 + SUPERBLOCK), rows, euclidean, with_mean,
                        logits, acc, run_max, run_sum)
            for b in range(batch):
                new_max = max(out_max[b], np.float64(run_max[b]))
                old_scale = math.exp(out_max[b] - new_max)
                block_scale = math.exp(np.float64(run_max[b]) - new_max)
                out_sum[b] = out_sum[b] * old_scale + np.float64(run_sum[b]) * block_scale
                if with_mean:
                    for d in range(dim):
                        out_acc[b, d] = out_acc[b, d] * old_scale + np.float64(acc[b, d]) * block_scale
                out_max[b] = new_max


def _numpy_view(tensor: Tensor) -> np.ndarray:
    """A float32 C-contiguous numpy view of a CPU tensor (a copy only if it is not contiguous)."""
    return tensor.detach().contiguous().numpy()


ShardMoments = tuple[np.ndarray, np.ndarray | None, np.ndarray]  # log_mass (B,), mean (B, D) or None, max_logit (B,)


def fused_shards(
    x: Tensor,
    x_sq: Tensor,
    points: Tensor,
    point_sq_norms: Tensor,
    inv_band_sq: Tensor,
    *,
    euclidean: bool,
    with_mean: bool,
    chunk_size: int,
    threads: int,
) -> list[ShardMoments]:
    """Streamed moments (float64 arrays ``log_mass`` (B,), ``mean`` (B, D) or None, ``max_logit`` (B,)) of CPU
    float32 queries ``x`` (B, D) with squared norms ``x_sq`` (B,) against ``points`` (N, D) stored in any float dtype
    with squared norms ``point_sq_norms`` (N,), one triple per shard of the points (up to ``threads``, run in
    parallel); for the squared distance, ``log_mass`` and ``max_logit`` leave out the row constant
    ``-|x|^2 / (2 sigma^2)``. float32 points are read in place (memory-mapped files included); other dtypes are
    converted ``chunk_size`` rows at a time into one float32 buffer per thread.
    """
    batch, dim = x.shape
    count = points.shape[0]
    xs, xs_sq, inv = _numpy_view(x), _numpy_view(x_sq), _numpy_view(inv_band_sq)
    sq = _numpy_view(point_sq_norms.to(torch.float32))
    rows = block_rows(dim)
    in_place = points.dtype == torch.float32 and points.is_contiguous()
    flat = _numpy_view(points) if in_place else None
    threads = max(1, min(threads, count * dim // MIN_FLOATS_PER_THREAD, count))
    bounds = [count * shard // threads for shard in range(threads + 1)]

    def run(shard: int) -> ShardMoments:
        acc, run_max, run_sum = np.zeros((batch, dim)), np.full(batch, -np.inf), np.zeros(batch)
        start, stop = bounds[shard], bounds[shard + 1]
        if flat is not None:
            _shard(xs, xs_sq, inv, flat, sq, start, stop, rows, euclidean, with_mean, acc, run_max, run_sum)
        else:
            buffer = torch.empty(min(chunk_size, stop - start), dim, dtype=torch.float32)
            view = buffer.numpy()
            for c0 in range(start, stop, chunk_size):
                c1 = min(stop, c0 + chunk_size)
                buffer[: c1 - c0].copy_(points[c0:c1])
                _shard(xs, xs_sq, inv, view, sq[c0:c1], 0, c1 - c0, rows, euclidean, with_mean, acc, run_max, run_sum)
        return run_max + np.log(run_sum), (acc / run_sum[:, None]) if with_mean else None, run_max

    if threads == 1:
        return [run(0)]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(run, range(threads)))
