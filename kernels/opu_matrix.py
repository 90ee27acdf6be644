"""The simulated OPU's random matrix R = A + iB (d, k): how it is drawn, stored, laid out, multiplied.

d = input features (bits), k = output components (n_components). SimulatedOPU (kernels/projection.py) holds R as
column blocks, each a torch tensor (2w, d): the real rows of its w components, then their imaginary
rows (R's columns transposed, so a block's GEMM is x @ block.T). Two ways to draw it:

- fast (SimulatedOPU's default mode): component c's 2d standard normals come from torch's CPU
  generator, seeded with NumPy's SeedSequence(seed, spawn_key=(c,)) (a stable hash of the pair).
  Any component, and so any column block, is reproducible alone: train and test, CPU and GPU and
  every block size see one R. RNG_SCHEME names this stream in cache keys and saved states. The
  std 1/sqrt(d) is applied to y afterwards (`FastMatrix.y_scale`), not to the 2dk entries.
- lightonml-matrix: lightonml 1.4.3's SimulatedOpuDevice.build_random_matrix(d, k, seed), bit for
  bit (read in its source): RandomState(seed).normal(0, 1/sqrt(d), (d, k)) drawn in float64 and
  cast to float32, the whole real part before the imaginary part.

Storage (matrix_dtype): "int8" (the default) keeps round(16 z) clipped at +-127 (7.9 sigma): a
Gaussian on a grid of sigma/16, so 0/1 inputs accumulate exactly in int32 (y is rescaled by
(1/16)^2). "bfloat16" and "float16" round z; "float32" keeps it. Each is an equally valid random
matrix; only lightonml-matrix must be float32. `block_gemm` multiplies 0/1 rows by a block in its
storage dtype: int8 by torch._int_mm (exact int32), bfloat16 on bf16 units with fp32 accumulation.
"""
from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

# Frozen: this string enters every matrix-cache key and every saved SimulatedOPU state, so it is
# never edited (its "k" is d, the input features). torch's CPU normal_ is deterministic for a seed;
# its AVX2 path (Sleef log/cos) may differ from the scalar one in the last ulp, below bf16
# resolution. tests/kernels/test_projection.py::test_fast_mode_stream_is_pinned guards the values.
RNG_SCHEME = "torch.Generator(SeedSequence(seed,spawn_key=(component,)).generate_state(1,uint64)).normal_(2,k) f32 [re, im]"
LIGHTONML_RNG = "numpy.RandomState(seed).normal float64->float32"
MATRIX_DTYPES = ("float32", "float16", "bfloat16", "int8")
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
INT8_STEPS_PER_SIGMA = 16.0
BLOCK_BYTES = 128 << 20  # default block: about this many bytes of float32 (re and im rows)


def block_width(n_components: int, d: int, block_size: int | None = None) -> int:
    """Components per column block: block_size (at most k), else ~BLOCK_BYTES of float32, >= 16."""
    if block_size:
        return min(block_size, n_components)
    return int(max(16, min(n_components, BLOCK_BYTES // (8 * d))))


def component_seed(seed: int, c: int) -> int:
    """The torch generator seed of component c (a stable hash: NumPy's SeedSequence)."""
    return int(np.random.SeedSequence(seed, spawn_key=(c,)).generate_state(1, np.uint64)[0])


def draw_components(seed: int, c0: int, c1: int, d: int, n_threads: int = 1) -> np.ndarray:
    """Unscaled standard normals (2*(c1-c0), d) float32: re rows for c0..c1-1, then im rows."""
    import torch

    out = torch.empty((2 * (c1 - c0), d), dtype=torch.float32)

    def fill(cs):
        pair = torch.empty((2, d), dtype=torch.float32)
        for c in cs:
            # torch's normal_ releases the GIL and is ~4x NumPy's float32 ziggurat here.
            pair.normal_(generator=torch.Generator().manual_seed(component_seed(seed, c)))
            out[c - c0], out[c1 - c0 + c - c0] = pair[0], pair[1]

    comps = range(c0, c1)
    nt = max(1, min(n_threads, len(comps)))
    if nt == 1:
        fill(comps)
    else:
        with ThreadPoolExecutor(nt) as ex:
            list(ex.map(fill, [comps[i::nt] for i in range(nt)]))
    return out.numpy()


def to_stored(t, matrix_dtype: str):
    """Standard normals (float32 tensor, consumed) -> the matrix_dtype values a block keeps."""
    import torch

    if matrix_dtype == "int8":
        return t.mul_(INT8_STEPS_PER_SIGMA).round_().clamp_(-127, 127).to(torch.int8)
    return t.to(getattr(torch, matrix_dtype))


@dataclass(frozen=True)
class FastMatrix:
    """The fast-mode matrix of one (seed, d, k, matrix_dtype, block width): what the cache keys."""

    seed: int
    n_features: int  # d
    n_components: int  # k
    matrix_dtype: str
    width: int  # components per block
    n_threads: int = 1  # draws only: the values do not depend on it

    @property
    def n_blocks(self) -> int:
        return -(-self.n_components // self.width)

    @property
    def nbytes(self) -> int:
        """Bytes of every block in matrix_dtype."""
        return 2 * self.n_features * self.n_components * ITEMSIZE[self.matrix_dtype]

    @property
    def y_scale(self) -> float:
        """Factor that turns |x block|^2 into y: std^2 = 1/d, and (1/16)^2 more for the int8 grid."""
        d = self.n_features
        return 1.0 / (d * INT8_STEPS_PER_SIGMA ** 2) if self.matrix_dtype == "int8" else 1.0 / d

    def columns(self, j: int) -> tuple[int, int]:
        """First and one-past-last component of block j."""
        return j * self.width, min(self.n_components, (j + 1) * self.width)

    def draw_components(self, c0: int, c1: int) -> np.ndarray:
        return draw_components(self.seed, c0, c1, self.n_features, self.n_threads)

    def stored(self, t):
        return to_stored(t, self.matrix_dtype)

    def draw_block(self, j: int, keep: bool):
        """Block j (2w, d): in matrix_dtype when kept (the cache), else as the GEMM operand: int8
        for int8 (the grid itself), else float32 holding matrix_dtype-rounded values."""
        import torch

        t = torch.from_numpy(self.draw_components(*self.columns(j)))
        if keep or self.matrix_dtype in ("int8", "float32"):
            return self.stored(t)
        return t.copy_(t.to(getattr(torch, self.matrix_dtype)))  # round in place: no second float32 copy

    def cache_params(self) -> dict:
        """The matrix-cache key's parameters (names and values frozen: old cache entries stay valid)."""
        return {"rng": RNG_SCHEME, "seed": self.seed, "n_features": self.n_features,
                "n_components": self.n_components, "matrix_dtype": self.matrix_dtype, "block": self.width,
                "int8_steps": INT8_STEPS_PER_SIGMA}


def lightonml_blocks(seed: int, d: int, n_components: int, width: int) -> list:
    """lightonml's matrix as float32 blocks (2w, d), drawn in row chunks so no (d, k) float64 array
    is ever held (d*k*4 bytes transiently, one part at a time)."""
    import torch

    k = n_components
    rs = np.random.RandomState(seed)
    std, step = 1.0 / np.sqrt(d), max(1, (32 << 20) // (8 * k))
    starts = range(0, k, width)
    blocks = [np.empty((2 * (min(k, c0 + width) - c0), d), np.float32) for c0 in starts]
    for part in (0, 1):  # legacy RandomState: the whole real part is drawn before the imaginary
        full = np.empty((d, k), np.float32)
        for r in range(0, d, step):  # chunked draws continue one stream: identical values
            full[r:r + step] = rs.normal(0.0, std, (min(step, d - r), k))
        for b, c0 in zip(blocks, starts):
            w = b.shape[0] // 2
            b[part * w:(part + 1) * w] = full[:, c0:c0 + w].T
        del full
    return [torch.from_numpy(b) for b in blocks]


# ---- multiplying 0/1 rows by a block, in the block's storage dtype ----------------------------
@contextmanager
def _bf16_fp32_matmul():
    """fp32 matmul that oneDNN may run in bf16 with fp32 accumulation and output (CPU AMX).

    Used only with operands that are exact in bf16 (0/1 bits, a bf16-stored matrix): the result
    is then the fp32 product, not an approximation.
    """
    import torch

    mm = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    old = getattr(mm, "fp32_precision", None)
    if old is None:
        yield
        return
    mm.fp32_precision = "bf16"
    try:
        yield
    finally:
        mm.fp32_precision = old


class Int8GemmWarning(RuntimeWarning):
    """torch has no int8 GEMM (torch._int_mm): the int8 matrix is multiplied in float32 (exact, slower)."""


def _int8_gemm(xb, W):
    """0/1 rows (r, d) int8 @ W.T with W (2w, d) int8 -> (r, 2w) float32, exact.

    |sums| <= 127 d < 2^24 (d < 132k), so the int32 result and its float32 cast are exact, and so
    is the float32 fallback."""
    import torch

    try:
        return torch._int_mm(xb, W.T).to(torch.float32)
    except AttributeError:  # torch._int_mm is private: a torch without it
        warnings.warn(f"torch {torch.__version__} has no torch._int_mm: the int8 OPU matrix is multiplied in "
                      "float32 instead (same numbers, several times slower); matrix_dtype='bfloat16' may be "
                      "faster with this torch", Int8GemmWarning, stacklevel=3)
    except RuntimeError:  # shapes its kernel does not take (e.g. few rows on CUDA): expected, silent
        pass
    return xb.to(torch.float32) @ W.T.to(torch.float32)


def gemm_operand(W):
    """A block as the GEMM takes it. CPU: upcast once per block (values stay exactly
    matrix_dtype's, see _bf16_fp32_matmul), int8 kept for the int8 GEMM. CUDA: the low-precision
    block as is, for the tensor cores (fp32 accumulation and output)."""
    import torch

    return W if (W.is_cuda or W.dtype == torch.int8) else W.to(torch.float32)


def block_gemm(xb, W, matrix_dtype: str):
    """0/1 rows xb (r, d) in W's dtype @ W.T, W = gemm_operand(block) (2w, d) -> (r, 2w) float32."""
    import torch

    if W.dtype == torch.int8:
        return _int8_gemm(xb, W)
    if W.dtype != torch.float32:  # CUDA, low precision
        return torch.mm(xb, W.T, out_dtype=torch.float32)
    if matrix_dtype == "bfloat16":
        with _bf16_fp32_matmul():
            return xb @ W.T
    return xb @ W.T
