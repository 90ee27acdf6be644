"""LightOnOPU: lightonml's OPU behind SimulatedOPU's interface (projection="lightonml").

`otl fit --projection lightonml` uses it: a real OPU where lightonml finds its drivers and
configuration, else lightonml's own simulator. Not to be confused with
SimulatedOPU(mode="lightonml-matrix") (kernels/projection.py), our simulation, which reproduces
that simulator's matrix bit for bit.

lightonml 1.4.3 facts (read in its source): SimulatedOpuDevice.build_random_matrix(d, k, seed)
draws RandomState(seed).normal(0, 1/sqrt(d), (d, k)) in float64, casts to float32, real part then
imaginary part, and transform computes |x @ (A + iB)|^2 as one complex64 GEMM. OPU() itself builds
that matrix with seed 0 and d = max_n_features (default 1000), so LightOnOPU builds it for d.
(d: input features, k: components.)
"""
from __future__ import annotations

import numpy as np

OPU_EXTRA_HINT = ('the "opu" extra: pip install --no-deps lightonml==1.4.3 && '
                  'pip install numexpr attrs requests "setuptools<81"')


class LightOnOPU:
    """Adapter over `lightonml.OPU`: a real OPU when its drivers exist, else lightonml's simulation.

    simulated=None means: the real device if lightonml finds an OPU configuration, else
    SimulatedOpuDevice with the matrix drawn for `seed` at fit (d*k*8 bytes, complex64).
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
        """Fix the input size d = n_features (bits per sample); builds the simulator's matrix."""
        from lightonml import OPU
        from lightonml.internal import config
        from lightonml.internal.simulated_device import SimulatedOpuDevice

        d = int(n_features)
        simulated = self.simulated if self.simulated is not None else not config.host_has_opu_config()
        if simulated:
            dev = SimulatedOpuDevice()
            # Drawn here with our seed; OPU() keeps a matrix whose shape already matches.
            dev.build_random_matrix(d, self.n_components, self.seed)
            self.opu_ = OPU(n_components=self.n_components, opu_device=dev, max_n_features=d,
                            disable_pbar=True, **self.opu_kwargs)
        else:
            self.opu_ = OPU(n_components=self.n_components, disable_pbar=True, **self.opu_kwargs)
        self.opu_.fit1d(n_features=d)
        self.n_features_ = d
        return self

    def transform(self, bits):
        """bits: (n, d) uint8 0/1 NumPy -> (n, k) float32 NumPy."""
        if self.opu_ is None:
            self.fit(bits.shape[1])
        return np.asarray(self.opu_.transform(np.ascontiguousarray(bits, dtype=np.uint8)), dtype=np.float32)

    def to_dict(self) -> dict:
        return {"kind": "LightOnOPU", "n_components": self.n_components, "seed": self.seed,
                "simulated": self.simulated, "n_features": self.n_features_}

    @classmethod
    def from_dict(cls, state: dict) -> "LightOnOPU":
        opu = cls(state["n_components"], seed=state["seed"], simulated=state.get("simulated"))
        if state.get("n_features"):
            opu.fit(state["n_features"])
        return opu
