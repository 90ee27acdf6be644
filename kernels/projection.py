"""SimulatedOPU: optical random features y = |x R|^2 of binary x (n, d) -> (n, k), simulated.

Physics, not lightonml's storage: R = A + iB (d, k) with A, B i.i.d. N(0, 1/d) (std 1/sqrt(d),
lightonml's SimulatedOpuDevice convention), and y = (xA)^2 + (xB)^2 is two real GEMMs, never a
complex one. For x in {0,1}^d, xA ~ N(0, |x|_1/d), so every output component is exponential:
E[y] = 2|x|_1/d and Var[y] = E[y]^2. Names: n rows, d input features (bits), k = n_components
outputs (the features of kernels/ridge.py).

The matrix (kernels/opu_matrix.py) is drawn on the host by torch's CPU generator, one stream per
component seeded from NumPy's SeedSequence (RNG_SCHEME), so train and test, CPU and GPU see one R;
it is drawn once per machine and then read from the on-disk cache (kernels/matrix_cache.py).

Where the time goes (d=50,176, k=4,000): drawing 2dk Gaussians (once per machine), then 4ndk flops
of GEMM in torch (a project dependency). The binary input is exact in any precision, so the only
rounding is the matrix's own storage dtype. The default, int8, multiplies 0/1 by round(16 z) in
exact int32 arithmetic (torch._int_mm; AMX/VNNI on CPU, ~5x the bf16 path here); a bfloat16 matrix
uses AMX/tensor cores with fp32 accumulation and output; float32 runs oneDNN's fp32 GEMM (~2.4x
OpenBLAS's here).

lightonml's own OPU (a real device, or its simulator) is LightOnOPU, in kernels/lightonml.py.
"""
from __future__ import annotations

import math
import os

import numpy as np

from kernels.opu_matrix import (ITEMSIZE, LIGHTONML_RNG, MATRIX_DTYPES, RNG_SCHEME, FastMatrix, block_gemm,
                                block_width, gemm_operand, lightonml_blocks)
from kernels.xp import get_array_module

LIGHTONML_MATRIX = "lightonml-matrix"
MODES = ("fast", LIGHTONML_MATRIX)
# Saved states written before the rename spell lightonml-matrix "lightonml" (now only the
# projection kind, LightOnOPU); from_dict maps them.
_OLD_MODE_NAMES = {"lightonml": LIGHTONML_MATRIX}


def _available_ram() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):  # Linux; not on macOS or Windows
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _to_torch(a):
    import torch

    return torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.from_dlpack(a)


def _from_torch(t, xp):
    return t.numpy() if xp is np else xp.from_dlpack(t)


class SimulatedOPU:
    """Simulated OPU: `fit(d)` then `transform(bits (n, d) 0/1) -> float32 (n, k)`, k = n_components.

    mode "fast": per-component counter-seeded Gaussian streams (see RNG_SCHEME) drawn in float32,
      stored in `matrix_dtype`: "int8" (default) keeps round(16 z), a Gaussian on a sigma/16 grid,
      and multiplies 0/1 inputs in exact int32 arithmetic on int8 units (AMX/VNNI: ~5x the bf16
      path here); "bfloat16" runs on bf16 units with fp32 accumulation. Either is an equally
      valid random matrix; "float32" is the plain one. cache=True keeps the drawn matrix
      (2*d*k*itemsize bytes) for later batches; cache=False redraws it on every call (for a
      single large call when memory is tight). disk_cache=True also keeps it on disk, drawn once
      per machine for a (seed, shape, dtype): see kernels/matrix_cache.py.
    mode "lightonml-matrix": the exact matrix of lightonml's SimulatedOpuDevice for `seed`
      (RandomState(seed).normal(0, 1/sqrt(d), (d, k)) as float32, real then imaginary part), kept
      as float32: d*k*4*2 bytes, plus d*k*4 transiently while it is built. (Saved states of the
      old spelling "lightonml" load as this mode; projection="lightonml" is LightOnOPU.)
    camera_bits=8: outputs are integer levels 0..255 (float32), like the OPU camera. The full
      scale is fixed like a hardware exposure, not per batch (per-batch scaling would give train
      and test different units): `camera_max` if given, else the 99.9th percentile of the first
      transformed batch, then frozen and saved by to_dict().
    block_size: output components per GEMM block (bounds working memory); None: ~128 MiB blocks.
    """

    def __init__(self, n_components: int, seed: int = 0, matrix_dtype: str = "int8",
                 block_size: int | None = None, camera_bits: int | None = None,
                 camera_max: float | None = None, mode: str = "fast", cache: bool = True,
                 n_threads: int | None = None, disk_cache: bool = True):
        if not isinstance(n_components, (int, np.integer)) or isinstance(n_components, bool) \
                or n_components <= 0:
            raise ValueError(f"SimulatedOPU: n_components must be a positive integer, got {n_components!r}")
        if mode in _OLD_MODE_NAMES:
            raise ValueError(f"SimulatedOPU: mode {mode!r} is now spelled {_OLD_MODE_NAMES[mode]!r} (lightonml's "
                             "matrix, simulated here); lightonml's own OPU is LightOnOPU (projection='lightonml')")
        if mode not in MODES:
            raise ValueError(f"SimulatedOPU: unknown mode {mode!r}; expected one of {MODES}")
        if matrix_dtype not in MATRIX_DTYPES:
            raise ValueError(f"SimulatedOPU: unknown matrix_dtype {matrix_dtype!r}; expected one of {MATRIX_DTYPES}")
        if mode == LIGHTONML_MATRIX and matrix_dtype != "float32":
            raise ValueError(f"SimulatedOPU: mode {LIGHTONML_MATRIX!r} reproduces lightonml's float32 matrix; "
                             f"matrix_dtype must be 'float32', got {matrix_dtype!r}")
        if camera_bits not in (None, 8):
            raise ValueError(f"SimulatedOPU: camera_bits must be None or 8, got {camera_bits!r}")
        if block_size is not None and block_size <= 0:
            raise ValueError(f"SimulatedOPU: block_size must be positive, got {block_size!r}")
        self.n_components = int(n_components)
        self.seed = int(seed)
        self.matrix_dtype = matrix_dtype
        self.block_size = block_size
        self.camera_bits = camera_bits
        self.camera_max = camera_max
        self.mode = mode
        self.cache = cache or mode == LIGHTONML_MATRIX  # its one RandomState stream cannot be redrawn by block
        self.disk_cache = disk_cache  # fast mode, cache=True: reuse the matrix across processes
        self.n_threads = n_threads or _usable_cpus()
        self.n_features_: int | None = None
        self._blocks = None  # list of torch tensors (2w, d) in matrix_dtype: rows re..., im...

    # ---- sizes -------------------------------------------------------------------------------
    def _block(self, d: int) -> int:
        return block_width(self.n_components, d, self.block_size)

    def _rows(self, d: int) -> int:
        # Rows of x converted to fp32 at a time: each column block re-converts them, so bigger
        # blocks and row chunks trade memory for fewer conversions.
        return int(max(64, (192 << 20) // (4 * d)))

    def _matrix(self, d: int) -> FastMatrix:
        return FastMatrix(self.seed, d, self.n_components, self.matrix_dtype, self._block(d), self.n_threads)

    def _n_blocks(self, d: int) -> int:
        return self._matrix(d).n_blocks

    def memory_bytes(self, n_features: int, batch: int) -> int:
        """Peak bytes this object allocates to fit and transform `batch` rows of `n_features` bits
        (the caller's input array excluded)."""
        d, k = int(n_features), self.n_components
        mb = self._block(d)
        cache = 2 * d * k * ITEMSIZE[self.matrix_dtype] if self.cache else 0
        build = d * k * 4 if self.mode == LIGHTONML_MATRIX else 0
        block = 2 * d * mb * (4 + 2)  # a float32 block and its low-precision copy
        rows = min(batch, self._rows(d))
        work = rows * d * 4 + rows * 2 * mb * 4
        return cache + build + block + work + batch * k * 4

    def _memory_hint(self) -> str:
        """What would lower memory_bytes for this configuration."""
        fixes = ["reduce n_components"]
        if self.mode == LIGHTONML_MATRIX:
            fixes.append("use mode='fast' (an int8 matrix: 1/4 of the float32 bytes, no float32 build copy)")
        elif self.matrix_dtype != "int8":
            fixes.append(f"use matrix_dtype='int8' (the default: 1 byte an entry, {self.matrix_dtype} takes "
                         f"{ITEMSIZE[self.matrix_dtype]})")
        if self.cache and self.mode == "fast":
            fixes.append("cache=False (redraw the matrix on each call instead of keeping it)")
        fixes.append("or transform fewer rows per call")
        return ", ".join(fixes)

    # ---- matrix ------------------------------------------------------------------------------
    def _scale(self, d: int) -> float:
        # Fast mode draws N(0, 1) and applies std^2 = 1/d to y (one multiply on n*k numbers
        # instead of 2*d*k); lightonml's matrix carries its std already.
        return 1.0 if self.mode == LIGHTONML_MATRIX else self._matrix(d).y_scale

    def _block_operand(self, j: int, d: int, device):
        """Block j on `device`: the cached one (moved there once), else freshly drawn."""
        if self._blocks is None:
            return self._matrix(d).draw_block(j, keep=False).to(device)
        if self._blocks[j].device != device:
            self._blocks[j] = self._blocks[j].to(device)  # the cache moves to the GPU once
        return self._blocks[j]

    @property
    def random_matrix(self):
        """The complex matrix R (d, k) complex64 as lightonml stores it (tests, small sizes only)."""
        self._check_fitted()
        d = self.n_features_
        s = math.sqrt(self._scale(d))
        blocks = self._blocks or [self._matrix(d).draw_block(j, keep=False) for j in range(self._n_blocks(d))]
        host = [b.float().cpu().numpy() for b in blocks]  # a cache that moved to the GPU stays there
        re = np.concatenate([h[: h.shape[0] // 2] for h in host]).T * s
        im = np.concatenate([h[h.shape[0] // 2:] for h in host]).T * s
        return (re + 1j * im).astype(np.complex64)

    # ---- API ---------------------------------------------------------------------------------
    def fit(self, n_features: int, batch: int = 1):
        """Fix the input size d = n_features (bits per sample) and draw (and cache) the matrix."""
        d = int(n_features)
        if d <= 0:
            raise ValueError(f"SimulatedOPU.fit: n_features must be positive, got {n_features!r}")
        need, avail = self.memory_bytes(d, batch), _available_ram()
        if (avail is not None and need > avail) or need > 1 << 50:
            raise MemoryError(
                f"SimulatedOPU({self.n_components} components, mode={self.mode!r}, "
                f"matrix_dtype={self.matrix_dtype!r}, cache={self.cache}) on {d} features would need "
                f"{need:,} bytes ({need / 2**30:.1f} GiB); available: "
                f"{'unknown' if avail is None else f'{avail:,} bytes'}. To need less: {self._memory_hint()}.")
        if self.n_features_ == d and (self._blocks is not None or not self.cache):
            return self
        self.n_features_ = d
        if self.mode == LIGHTONML_MATRIX:
            self._blocks = lightonml_blocks(self.seed, d, self.n_components, self._block(d))
        elif self.cache:
            from kernels.matrix_cache import load_or_draw

            self._blocks = load_or_draw(self._matrix(d), self.disk_cache)
        return self

    def _cache_params(self, d: int) -> dict:
        """The on-disk matrix cache's key parameters for input size d (kernels/matrix_cache.py)."""
        return self._matrix(d).cache_params()

    def _check_fitted(self):
        if self.n_features_ is None:
            raise RuntimeError("SimulatedOPU: call fit(n_features) first")

    def transform(self, bits):
        """bits: (n, d) 0/1 (uint8 or bool, NumPy or CuPy) -> y: (n, k) float32, same module."""
        import torch

        xp = get_array_module(bits)
        bits = xp.asarray(bits)
        if bits.ndim != 2:
            raise ValueError(f"SimulatedOPU.transform: expected (n, d) bits, got shape {bits.shape}")
        if self.n_features_ is None:
            self.fit(bits.shape[1], batch=bits.shape[0])
        d, n = self.n_features_, bits.shape[0]
        if bits.shape[1] != d:
            raise ValueError(f"SimulatedOPU.transform: fitted on {d} features, got {bits.shape[1]}")
        if bits.dtype.kind not in "bu" or (bits.dtype.kind == "u" and bits.size and int(bits.max()) > 1):
            raise ValueError("SimulatedOPU.transform: input must be 0/1 bits (uint8 or bool); "
                             "binarize it first (kernels.encode.binarize)")
        xt = _to_torch(xp.ascontiguousarray(bits).astype(xp.uint8, copy=False))
        y = torch.empty((n, self.n_components), dtype=torch.float32, device=xt.device)
        mb, rows, scale = self._block(d), self._rows(d), self._scale(d)
        for j in range(self._n_blocks(d)):
            W = gemm_operand(self._block_operand(j, d, xt.device))
            w = W.shape[0] // 2
            for r in range(0, n, rows):
                z = block_gemm(xt[r:r + rows].to(W.dtype), W, self.matrix_dtype)  # (rows, 2w) fp32: re | im
                re, im = z[:, :w], z[:, w:]
                out = y[r:r + rows, j * mb:j * mb + w]
                torch.mul(re, re, out=out)
                out.addcmul_(im, im)
                if scale != 1.0:
                    out.mul_(scale)
        y = _from_torch(y, xp)
        return self._camera(y, xp) if self.camera_bits else y

    def _camera(self, y, xp):
        levels = float(2 ** self.camera_bits - 1)
        if self.camera_max is None:
            q = xp.quantile(y.reshape(-1)[:: max(1, y.size // 1_000_000)], 0.999)
            self.camera_max = float(q) if float(q) > 0 else 1.0
        out = xp.rint(y * xp.float32(levels / self.camera_max))
        return xp.clip(out, 0, levels, out=out).astype(xp.float32, copy=False)

    def fit_transform(self, bits):
        return self.fit(bits.shape[1], batch=bits.shape[0]).transform(bits)

    def to_dict(self) -> dict:
        return {"kind": "SimulatedOPU", "n_components": self.n_components, "seed": self.seed,
                "matrix_dtype": self.matrix_dtype, "block_size": self.block_size,
                "camera_bits": self.camera_bits, "camera_max": self.camera_max, "mode": self.mode,
                "cache": self.cache, "n_features": self.n_features_,
                "rng": RNG_SCHEME if self.mode == "fast" else LIGHTONML_RNG}

    @classmethod
    def from_dict(cls, state: dict) -> "SimulatedOPU":
        """Rebuild from to_dict()'s state (also states saved under the old mode name "lightonml")."""
        mode = _OLD_MODE_NAMES.get(state["mode"], state["mode"])
        opu = cls(state["n_components"], seed=state["seed"], matrix_dtype=state["matrix_dtype"],
                  block_size=state.get("block_size"), camera_bits=state.get("camera_bits"),
                  camera_max=state.get("camera_max"), mode=mode, cache=state.get("cache", True))
        if state.get("n_features"):
            opu.fit(state["n_features"])
        return opu
