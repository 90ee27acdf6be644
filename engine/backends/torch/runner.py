"""The torch reference runner: the cut module in eager mode, fp32 (or fp16 on a GPU)."""
from __future__ import annotations


from engine.backends.base import Runner, RunnerError


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, module, device: str = "cpu", dtype: str = "float32", threads: int | None = None):
        super().__init__()
        if not hasattr(module, "forward"):
            raise RunnerError(f"the torch backend runs a torch module; got {type(module).__name__}")
        if dtype == "float16" and device == "cpu":
            raise RunnerError("torch fp16 runs on a CUDA device only; use dtype='float32' on the CPU")
        self.module, self.device, self.dtype, self.threads = module, device, dtype, threads

    def _activate(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(int(self.threads))
        self._torch = torch
        self._dtype = getattr(torch, self.dtype)
        self.module = self.module.to(self.device, self._dtype).eval()

    def _infer(self, batch):
        torch = self._torch
        with torch.inference_mode():
            x = torch.as_tensor(batch, device=self.device).to(self._dtype)
            y = self.module(x).float()
        if self.device == "cpu":
            return y.numpy()
        import cupy  # features stay on the GPU for the numerics that follow

        return cupy.from_dlpack(y.contiguous())
