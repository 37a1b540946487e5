"""The inpainting UNet as a denoiser D(x, sigma) -> x0, with classifier-free guidance.

This is the only place that knows the model's parameterization (epsilon, docs/model.md §5.1) and
the 9-channel inpainting input (docs/model.md §6.2); the samplers see a plain denoiser.

Per step (B rows, latent h x w):
    x_vp = x / sqrt(sigma^2 + 1)                 only the 4 noisy channels are scaled (docs/model.md §6.2)
    in   = [x_vp, mask, masked-image latent]     [2B, 9, h, w], rows [uncond..., cond...]
    eps  = unet(in, t(sigma), [ctx_uncond; ctx_cond])   ONE UNet call on the doubled batch (fused_cfg)
    eps  = eps_u + g * (eps_c - eps_u)           g per row [B] (docs/model.md §5.2: only the context differs)
    x0   = x - sigma * eps

Two pieces:
- `GuidedStep` owns static device buffers for one batch shape (UNet input, contexts, guidance, and the
  per-step x, divisor sqrt(sigma^2+1) and timesteps) and computes the guided eps from them. `load` writes a
  batch's conditioning into the buffers, so one step object (and, on CUDA, one captured CUDA graph) serves
  every batch of that shape.
- `InpaintDenoiser` walks one sigma grid: the divisors and timesteps of the whole grid go to the device once,
  before the loop, so a step only indexes device tables. Nothing in a step reads a device value on the host.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from .schedule import Schedule
from .speed import sdpa_context, synchronize, to_device

UNetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class GuidedStep:
    """eps(x[B,4,h,w] fp32, divisor 0-dim fp32, t[2B] int64) -> guided eps [B,4,h,w] fp32, all on `device`.

    unet: callable (x[2B,9,h,w], t[2B], context[2B,L,C]) -> eps[2B,4,h,w] in the model dtype.
    fused_cfg: one UNet call on the doubled batch (else two calls of B rows). sdpa: attention backend.
    graph: run from the static buffers; on CUDA the computation is captured once as a CUDA graph and replayed
    (on other devices the same static-buffer path runs eagerly, which is what the CPU tests check).
    warm: on the first `load`, run (and time) two eager calls before any real step, so compilation and
    autotuning happen, and are measured, there; a CUDA graph always does this before capture.
    The returned eps is a buffer that the next call overwrites in graph mode: use it before calling again.
    """

    def __init__(self, unet: UNetFn, batch: int, latent: tuple[int, int], context: tuple[int, int],
                 dtype: torch.dtype, device: torch.device | str, *, fused_cfg: bool = True,
                 channels_last: bool = False, sdpa: str = "auto", graph: bool = False, warm: bool = False):
        B, (h, w), (L, C) = batch, latent, context
        dev = torch.device(device)
        self.unet, self.batch, self.dtype, self.device = unet, B, dtype, dev
        self.fused_cfg, self.sdpa, self.graph, self.warm = fused_cfg, sdpa, graph, warm
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        # UNet input: channels 4..8 hold the conditioning (the same in both halves, docs/model.md §5.2), 0..3 are
        # per step.
        self.input = torch.zeros(2 * B, 9, h, w, dtype=dtype, device=dev).contiguous(memory_format=fmt)
        self.context = torch.zeros(2 * B, L, C, dtype=dtype, device=dev)
        self.guidance = torch.zeros(B, 1, 1, 1, dtype=torch.float32, device=dev)
        # Per-step inputs, used by the graph path (the eager path reads its arguments directly).
        self.x = torch.zeros(B, 4, h, w, dtype=torch.float32, device=dev)
        self.divisor = torch.ones((), dtype=torch.float32, device=dev)
        self.t = torch.zeros(2 * B, dtype=torch.int64, device=dev)
        self.out: torch.Tensor | None = None
        self._cuda_graph: torch.cuda.CUDAGraph | None = None
        self.timings: dict[str, float] = {}  # first/second eager call and capture, seconds (when warmed up)

    def load(self, cond: torch.Tensor, context_uncond: torch.Tensor, context_cond: torch.Tensor,
             guidance: torch.Tensor) -> None:
        """A new batch: cond [B,5,h,w] = [mask, masked-image latent * scale]; contexts [B,L,C]; guidance [B]."""
        B = self.batch
        if cond.shape != (B, 5, *self.input.shape[2:]):
            raise ValueError(f"cond {tuple(cond.shape)} does not match the step's shape {(B, 5, *self.input.shape[2:])}")
        want = (B, *self.context.shape[1:])
        if context_uncond.shape != want or context_cond.shape != want:
            raise ValueError(f"contexts {tuple(context_uncond.shape)} / {tuple(context_cond.shape)} do not match {want}")
        if guidance.shape != (B,):
            raise ValueError(f"guidance must have shape ({B},), got {tuple(guidance.shape)}")
        cond = cond.to(self.device, self.dtype)
        self.input[:B, 4:] = cond
        self.input[B:, 4:] = cond
        self.context[:B] = context_uncond
        self.context[B:] = context_cond
        self.guidance.copy_(guidance.view(B, 1, 1, 1))
        if self.graph and self.device.type == "cuda":
            if self._cuda_graph is None:
                self.capture()
        elif self.warm and not self.timings:
            self.warm_up()

    def __call__(self, x: torch.Tensor, divisor: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.graph:
            return self._eps(x, divisor, t)
        self.x.copy_(x)
        self.divisor.copy_(divisor)
        self.t.copy_(t)
        if self._cuda_graph is not None:
            self._cuda_graph.replay()
        else:
            self.out = self._eps(self.x, self.divisor, self.t)
        return self.out

    def _eps(self, x: torch.Tensor, divisor: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        B = self.batch
        x_vp = (x / divisor).to(self.dtype)
        self.input[:B, :4] = x_vp
        self.input[B:, :4] = x_vp
        with sdpa_context(self.sdpa):
            if self.fused_cfg:
                out = self.unet(self.input, t, self.context)
            else:
                out = torch.cat([self.unet(self.input[:B], t[:B], self.context[:B]),
                                 self.unet(self.input[B:], t[B:], self.context[B:])])
        eps_u, eps_c = out[:B].float(), out[B:].float()
        return eps_u + self.guidance * (eps_c - eps_u)

    def warm_up(self) -> None:
        """Two eager calls on the static buffers, timed: the first compiles (torch.compile) and autotunes."""
        for key in ("first_call_s", "second_call_s"):
            synchronize(self.device)
            t0 = time.perf_counter()
            self.out = self._eps(self.x, self.divisor, self.t)
            synchronize(self.device)
            self.timings[key] = time.perf_counter() - t0

    def capture(self) -> None:
        """Warm up on a side stream (as CUDA graph capture requires), then capture one step from the static
        buffers. The buffers hold valid values here (a loaded batch, x = 0, divisor 1, t = 0)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.warm_up()
        torch.cuda.current_stream(self.device).wait_stream(side)
        t0 = time.perf_counter()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads (Ray's) may use CUDA
            self.out = self._eps(self.x, self.divisor, self.t)
        synchronize(self.device)
        self.timings["capture_s"] = time.perf_counter() - t0
        self._cuda_graph = graph


class InpaintDenoiser:
    """D(x[B,4,h,w] fp32, sigma) -> x0[B,4,h,w] fp32 for the sigmas of one grid.

    step: a loaded GuidedStep. sigmas: the grid the sampler walks (CPU float32 [n+1]); the divisors
    sqrt(sigma^2 + 1) and UNet timesteps of its first n entries are sent to the device once, here.
    """

    def __init__(self, step: GuidedStep, schedule: Schedule, sigmas: torch.Tensor, pinned: bool = False):
        evals = sigmas[:-1]
        B = step.batch
        self.step = step
        # Same float32 arithmetic as x / (sigma**2 + 1) ** 0.5 on each 0-dim sigma (samplers.to_vp).
        self._divisors = to_device((evals**2 + 1) ** 0.5, step.device, pinned)
        t = torch.tensor(schedule.unet_timesteps(sigmas), dtype=torch.int64)
        self._timesteps = to_device(t[:, None].expand(-1, 2 * B).contiguous(), step.device, pinned)  # [n, 2B]
        self._index = {float(s): i for i, s in enumerate(evals)}
        self.calls = 0  # UNet evaluations so far (each on the doubled batch)

    def _lookup(self, sigma: torch.Tensor) -> int:
        try:
            return self._index[float(sigma)]  # sigma is a host (CPU) scalar: no device read
        except KeyError:
            raise ValueError(f"sigma {float(sigma)} is not on this denoiser's grid") from None

    def eps(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Guided epsilon prediction, fp32 [B, 4, h, w] (a buffer the next call may overwrite)."""
        if x.shape[0] != self.step.batch:
            raise ValueError(f"denoiser built for {self.step.batch} rows, got x with {x.shape[0]}")
        i = self._lookup(sigma)
        self.calls += 1
        return self.step(x, self._divisors[i], self._timesteps[i])

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x - sigma * self.eps(x, sigma)
