"""Optical random features y = |x R|^2 for binary x: a fast simulation, or lightonml's OPU.

Physics, not lightonml's storage: R = A + iB with A, B i.i.d. N(0, 1/k) (std 1/sqrt(k),
k = n_features: lightonml's SimulatedOpuDevice convention), and y = (xA)^2 + (xB)^2 is two real
GEMMs, never a complex one. For x in {0,1}^k, xA ~ N(0, |x|_1/k), so every output component is
exponential: E[y] = 2|x|_1/k and Var[y] = E[y]^2.

Where the time goes (k=50,176, m=4,000): drawing 2km Gaussians, then 4nkm flops of GEMM. The
GEMM runs in torch (a project dependency): oneDNN's fp32 GEMM is ~2.4x OpenBLAS's here, and a
bfloat16 matrix uses AMX/tensor cores with fp32 accumulation and fp32 output. The binary input is
exact in any precision, so the only rounding is the matrix's own storage dtype. The matrix itself
is drawn on the host by torch's CPU generator from per-component seeds (RNG_SCHEME) in every case,
so train and test, CPU and GPU, see one R; it is drawn once per machine and then read from the
on-disk cache (kernels/matrix_cache.py).

lightonml 1.4.3 facts (read in its source): SimulatedOpuDevice.build_random_matrix(k, m, seed)
draws RandomState(seed).normal(0, 1/sqrt(k), (k, m)) in float64, casts to float32, real part then
imaginary part, and transform computes |x @ (A + iB)|^2 as one complex64 GEMM. OPU() itself builds
that matrix with seed 0 and k = max_n_features (default 1000), so LightOnOPU builds it for k.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from kernels.xp import get_array_module

MODES = ("fast", "lightonml")
MATRIX_DTYPES = ("float32", "float16", "bfloat16", "int8")
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
# int8 storage keeps round(16 z) for each standard normal z (clipped at +-127, i.e. 7.9 sigma):
# a Gaussian on a grid of sigma/16. 0/1 inputs times int8 entries accumulate exactly in int32, so
# the GEMM (AMX/VNNI on CPU) adds no rounding at all; y is rescaled by (1/16)^2 afterwards.
INT8_STEPS_PER_SIGMA = 16.0
# Fast-mode stream id: component c draws its 2k numbers from its own seeded generator, so
# any component (and so any column block) is reproducible alone, whatever the block size.
# torch's CPU normal_ is deterministic for a seed; its AVX2 path (Sleef log/cos) may differ from
# the scalar one in the last ulp, below bf16 resolution. test_fast_mode_stream_is_pinned guards it.
RNG_SCHEME = "torch.Generator(SeedSequence(seed,spawn_key=(component,)).generate_state(1,uint64)).normal_(2,k) f32 [re, im]"
OPU_EXTRA_HINT = ('the "opu" extra: pip install --no-deps lightonml==1.4.3 && '
                  'pip install numexpr attrs requests "setuptools<81"')


def _available_ram() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


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


def _to_torch(a):
    import torch

    return torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.from_dlpack(a)


def _from_torch(t, xp):
    return t.numpy() if xp is np else xp.from_dlpack(t)


class SimulatedOPU:
    """Simulated OPU: `fit(k)` then `transform(bits (n, k) 0/1) -> float32 (n, m)`, m = n_components.

    mode "fast": per-component counter-seeded Gaussian streams (see RNG_SCHEME) drawn in float32,
      stored in `matrix_dtype`: "int8" (default) keeps round(16 z), a Gaussian on a sigma/16 grid,
      and multiplies 0/1 inputs in exact int32 arithmetic on int8 units (AMX/VNNI: ~5x the bf16
      path here); "bfloat16" runs on bf16 units with fp32 accumulation. Either is an equally
      valid random matrix; "float32" is the plain one. cache=True keeps the drawn matrix
      (k*2m*itemsize bytes) for later batches; cache=False redraws it on every call (for a
      single large call when memory is tight). disk_cache=True also keeps it on disk, drawn once
      per machine for a (seed, shape, dtype): see kernels/matrix_cache.py.
    mode "lightonml": the exact matrix of lightonml's SimulatedOpuDevice for `seed`
      (RandomState(seed).normal(0, 1/sqrt(k), (k, m)) as float32, real then imaginary part), kept
      as float32: k*m*4*2 bytes, plus k*m*4 transiently while it is built.
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
        if mode not in MODES:
            raise ValueError(f"SimulatedOPU: unknown mode {mode!r}; expected one of {MODES}")
        if matrix_dtype not in MATRIX_DTYPES:
            raise ValueError(f"SimulatedOPU: unknown matrix_dtype {matrix_dtype!r}; expected one of {MATRIX_DTYPES}")
        if mode == "lightonml" and matrix_dtype != "float32":
            raise ValueError("SimulatedOPU: mode 'lightonml' reproduces lightonml's float32 matrix; "
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
        self.cache = cache or mode == "lightonml"  # lightonml's stream cannot be redrawn by block
        self.disk_cache = disk_cache  # fast mode, cache=True: reuse the matrix across processes
        self.n_threads = n_threads or len(os.sched_getaffinity(0))
        self.n_features_: int | None = None
        self._blocks = None  # list of torch tensors (2*mb, k) in matrix_dtype: rows re..., im...

    # ---- sizes -------------------------------------------------------------------------------
    def _block(self, k: int) -> int:
        if self.block_size:
            return min(self.block_size, self.n_components)
        return int(max(16, min(self.n_components, (128 << 20) // (8 * k))))

    def _rows(self, k: int) -> int:
        # Rows of x converted to fp32 at a time: each column block re-converts them, so bigger
        # blocks and row chunks trade memory for fewer conversions.
        return int(max(64, (192 << 20) // (4 * k)))

    def memory_bytes(self, n_features: int, batch: int) -> int:
        """Peak bytes this object allocates to fit and transform `batch` rows of `n_features` bits
        (the caller's input array excluded)."""
        k, m = int(n_features), self.n_components
        mb = self._block(k)
        cache = 2 * k * m * _ITEMSIZE[self.matrix_dtype] if self.cache else 0
        build = k * m * 4 if self.mode == "lightonml" else 0
        block = 2 * k * mb * (4 + 2)  # a float32 block and its low-precision copy
        rows = min(batch, self._rows(k))
        work = rows * k * 4 + rows * 2 * mb * 4
        return cache + build + block + work + batch * m * 4

    # ---- matrix ------------------------------------------------------------------------------
    def _draw_components(self, c0: int, c1: int, k: int) -> np.ndarray:
        """Unscaled standard normals (2*(c1-c0), k) float32: re rows for c0..c1, then im rows."""
        import torch

        out = torch.empty((2 * (c1 - c0), k), dtype=torch.float32)

        def fill(cs):
            pair = torch.empty((2, k), dtype=torch.float32)
            for c in cs:
                # torch's normal_ releases the GIL and is ~4x NumPy's float32 ziggurat here;
                # the per-component seed comes from NumPy's SeedSequence (stable hashing).
                seed = int(np.random.SeedSequence(self.seed, spawn_key=(c,)).generate_state(1, np.uint64)[0])
                pair.normal_(generator=torch.Generator().manual_seed(seed))
                out[c - c0], out[c1 - c0 + c - c0] = pair[0], pair[1]

        comps = range(c0, c1)
        nt = max(1, min(self.n_threads, len(comps)))
        if nt == 1:
            fill(comps)
        else:
            with ThreadPoolExecutor(nt) as ex:
                list(ex.map(fill, [comps[i::nt] for i in range(nt)]))
        return out.numpy()

    def _draw_block(self, j: int, k: int, keep: bool):
        """Block j of the matrix as a torch tensor (2*w, k): in matrix_dtype when kept for the
        cache, else as float32 holding matrix_dtype-rounded values, ready for the GEMM."""
        import torch

        mb = self._block(k)
        c0, c1 = j * mb, min(self.n_components, (j + 1) * mb)
        t = torch.from_numpy(self._draw_components(c0, c1, k))
        if keep or self.matrix_dtype in ("int8", "float32"):  # int8: the GEMM operand is the grid itself
            return self._stored(t)
        return t.copy_(t.to(getattr(torch, self.matrix_dtype)))  # round in place: no second float32 copy

    def _stored(self, t):
        """Standard normals (float32 tensor) -> the matrix_dtype values the cache keeps."""
        import torch

        if self.matrix_dtype == "int8":
            return t.mul_(INT8_STEPS_PER_SIGMA).round_().clamp_(-127, 127).to(torch.int8)
        return t.to(getattr(torch, self.matrix_dtype))

    def _build_lightonml(self, k: int):
        """lightonml's matrix, drawn in row chunks so no (k, m) float64 array is ever held."""
        import torch

        m, mb = self.n_components, self._block(k)
        rs = np.random.RandomState(self.seed)
        std, step = 1.0 / np.sqrt(k), max(1, (32 << 20) // (8 * m))
        starts = range(0, m, mb)
        blocks = [np.empty((2 * (min(m, c0 + mb) - c0), k), np.float32) for c0 in starts]
        for part in (0, 1):  # legacy RandomState: the whole real part is drawn before the imaginary
            full = np.empty((k, m), np.float32)
            for r in range(0, k, step):  # chunked draws continue one stream: identical values
                full[r:r + step] = rs.normal(0.0, std, (min(step, k - r), m))
            for b, c0 in zip(blocks, starts):
                w = b.shape[0] // 2
                b[part * w:(part + 1) * w] = full[:, c0:c0 + w].T
            del full
        return [torch.from_numpy(b) for b in blocks]

    def _scale(self, k: int) -> float:
        # Fast mode draws N(0, 1) and applies std^2 = 1/k to y (one multiply on n*m numbers
        # instead of 2*k*m); lightonml's matrix carries its std already.
        if self.mode == "lightonml":
            return 1.0
        return 1.0 / (k * INT8_STEPS_PER_SIGMA ** 2) if self.matrix_dtype == "int8" else 1.0 / k

    @property
    def random_matrix(self):
        """The complex matrix R (k, m) complex64 as lightonml stores it (tests, small sizes only)."""
        self._check_fitted()
        k, s = self.n_features_, math.sqrt(self._scale(self.n_features_))
        blocks = self._blocks or [self._draw_block(j, k, False) for j in range(self._n_blocks(k))]
        re = np.concatenate([b[: b.shape[0] // 2].float().numpy() for b in blocks]).T * s
        im = np.concatenate([b[b.shape[0] // 2:].float().numpy() for b in blocks]).T * s
        return (re + 1j * im).astype(np.complex64)

    def _n_blocks(self, k: int) -> int:
        return -(-self.n_components // self._block(k))

    # ---- API ---------------------------------------------------------------------------------
    def fit(self, n_features: int, batch: int = 1):
        """Fix the input size k (bits per sample) and draw (and cache) the matrix."""
        k = int(n_features)
        if k <= 0:
            raise ValueError(f"SimulatedOPU.fit: n_features must be positive, got {n_features!r}")
        need, avail = self.memory_bytes(k, batch), _available_ram()
        if (avail is not None and need > avail) or need > 1 << 50:
            raise MemoryError(
                f"SimulatedOPU({self.n_components} components, mode={self.mode!r}, "
                f"matrix_dtype={self.matrix_dtype!r}, cache={self.cache}) on {k} features would need "
                f"{need:,} bytes ({need / 2**30:.1f} GiB); available: "
                f"{'unknown' if avail is None else f'{avail:,} bytes'}. Reduce n_components, use "
                f"matrix_dtype='bfloat16', or cache=False.")
        if self.n_features_ == k and (self._blocks is not None or not self.cache):
            return self
        self.n_features_ = k
        if self.mode == "lightonml":
            self._blocks = self._build_lightonml(k)
        elif self.cache:
            from kernels.matrix_cache import load_or_draw

            self._blocks = load_or_draw(self, k)
        return self

    # ---- the on-disk matrix cache (kernels/matrix_cache.py) ----------------------------------
    def _cache_params(self, k: int) -> dict:
        return {"rng": RNG_SCHEME, "seed": self.seed, "n_features": k, "n_components": self.n_components,
                "matrix_dtype": self.matrix_dtype, "block": self._block(k), "int8_steps": INT8_STEPS_PER_SIGMA}

    def _check_fitted(self):
        if self.n_features_ is None:
            raise RuntimeError("SimulatedOPU: call fit(n_features) first")

    def transform(self, bits):
        """bits: (n, k) 0/1 (uint8 or bool, NumPy or CuPy) -> y: (n, m) float32, same module."""
        import torch

        xp = get_array_module(bits)
        bits = xp.asarray(bits)
        if bits.ndim != 2:
            raise ValueError(f"SimulatedOPU.transform: expected (n, k) bits, got shape {bits.shape}")
        if self.n_features_ is None:
            self.fit(bits.shape[1], batch=bits.shape[0])
        k, n = self.n_features_, bits.shape[0]
        if bits.shape[1] != k:
            raise ValueError(f"SimulatedOPU.transform: fitted on {k} features, got {bits.shape[1]}")
        if bits.dtype.kind not in "bu" or (bits.dtype.kind == "u" and bits.size and int(bits.max()) > 1):
            raise ValueError("SimulatedOPU.transform: input must be 0/1 bits (uint8 or bool); "
                             "binarize it first (kernels.encode.binarize)")
        xt = _to_torch(xp.ascontiguousarray(bits).astype(xp.uint8, copy=False))
        y = torch.empty((n, self.n_components), dtype=torch.float32, device=xt.device)
        mb, rows, scale = self._block(k), self._rows(k), self._scale(k)
        for j in range(self._n_blocks(k)):
            if self._blocks is not None and self._blocks[j].device != xt.device:
                self._blocks[j] = self._blocks[j].to(xt.device)  # cache moves to the GPU once
            W = self._blocks[j] if self._blocks is not None else self._draw_block(j, k, False).to(xt.device)
            W = self._gemm_operand(W)
            w = W.shape[0] // 2
            for r in range(0, n, rows):
                z = self._gemm(xt[r:r + rows].to(W.dtype), W)  # (rows, 2w) fp32: re | im
                re, im = z[:, :w], z[:, w:]
                out = y[r:r + rows, j * mb:j * mb + w]
                torch.mul(re, re, out=out)
                out.addcmul_(im, im)
                if scale != 1.0:
                    out.mul_(scale)
        y = _from_torch(y, xp)
        return self._camera(y, xp) if self.camera_bits else y

    def _gemm_operand(self, W):
        import torch

        # CPU: upcast once per block; values stay exactly matrix_dtype's (see _bf16_fp32_matmul).
        # CUDA: keep the low-precision operand for the tensor cores (fp32 accumulate and output).
        return W if (W.is_cuda or W.dtype == torch.int8) else W.to(torch.float32)

    def _gemm(self, xb, W):
        import torch

        if W.dtype == torch.int8:
            try:  # exact: int8 x int8 -> int32 (|sums| < 127 k < 2^24, so the float32 cast is exact too)
                return torch._int_mm(xb, W.T).to(torch.float32)
            except RuntimeError:  # shapes the int8 kernel does not take (e.g. few rows on CUDA)
                return xb.to(torch.float32) @ W.T.to(torch.float32)
        if W.dtype != torch.float32:  # CUDA, low precision
            return torch.mm(xb, W.T, out_dtype=torch.float32)
        if self.matrix_dtype == "bfloat16":
            with _bf16_fp32_matmul():
                return xb @ W.T
        return xb @ W.T

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
                "rng": RNG_SCHEME if self.mode == "fast" else "numpy.RandomState(seed).normal float64->float32"}

    @classmethod
    def from_dict(cls, d: dict) -> "SimulatedOPU":
        opu = cls(d["n_components"], seed=d["seed"], matrix_dtype=d["matrix_dtype"],
                  block_size=d.get("block_size"), camera_bits=d.get("camera_bits"),
                  camera_max=d.get("camera_max"), mode=d["mode"], cache=d.get("cache", True))
        if d.get("n_features"):
            opu.fit(d["n_features"])
        return opu


class LightOnOPU:
    """Adapter over `lightonml.OPU`: a real OPU when its drivers exist, else lightonml's simulation.

    simulated=None means: the real device if lightonml finds an OPU configuration, else
    SimulatedOpuDevice with the matrix drawn for `seed` at fit (k*m*8 bytes, complex64).
    """

    def __init__(self, n_components: int, seed: int = 0, simulated: bool | None = None, **opu_kwargs):
        if n_components <= 0:
            raise ValueError(f"LightOnOPU: n_components must be positive, got {n_components!r}")
        try:
            import lightonml  # noqa: F401
        except ImportError as e:
            raise ImportError(f"LightOnOPU needs lightonml, which is not installed; install {OPU_EXTRA_HINT}") from e
        self.n_components, self.seed, self.simulated = int(n_components), int(seed), simulated
        self.opu_kwargs = opu_kwargs
        self.opu_ = None
        self.n_features_ = None

    def fit(self, n_features: int):
        from lightonml import OPU
        from lightonml.internal import config
        from lightonml.internal.simulated_device import SimulatedOpuDevice

        k = int(n_features)
        simulated = self.simulated if self.simulated is not None else not config.host_has_opu_config()
        if simulated:
            dev = SimulatedOpuDevice()
            # Drawn here with our seed; OPU() keeps a matrix whose shape already matches.
            dev.build_random_matrix(k, self.n_components, self.seed)
            self.opu_ = OPU(n_components=self.n_components, opu_device=dev, max_n_features=k,
                            disable_pbar=True, **self.opu_kwargs)
        else:
            self.opu_ = OPU(n_components=self.n_components, disable_pbar=True, **self.opu_kwargs)
        self.opu_.fit1d(n_features=k)
        self.n_features_ = k
        return self

    def transform(self, bits):
        """bits: (n, k) uint8 0/1 NumPy -> (n, m) float32 NumPy."""
        if self.opu_ is None:
            self.fit(bits.shape[1])
        return np.asarray(self.opu_.transform(np.ascontiguousarray(bits, dtype=np.uint8)), dtype=np.float32)

    def to_dict(self) -> dict:
        return {"kind": "LightOnOPU", "n_components": self.n_components, "seed": self.seed,
                "simulated": self.simulated, "n_features": self.n_features_}

    @classmethod
    def from_dict(cls, d: dict) -> "LightOnOPU":
        opu = cls(d["n_components"], seed=d["seed"], simulated=d.get("simulated"))
        if d.get("n_features"):
            opu.fit(d["n_features"])
        return opu
