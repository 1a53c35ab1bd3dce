"""PyTorch backend: CPU fp32 eager, or CUDA with fp16 autocast and CUDA graphs captured per batch size.

Imports torch and numpy only (the GPU check script runs it where PyAV and bentoml are absent)."""
from __future__ import annotations

import numpy as np
import torch

from mmdeploy.runtime.base import OUTPUTS, Predictor
from mmdeploy.spec import ClipSpec


class TorchPredictor(Predictor):
    """`device="cpu"`: eager fp32. `device="cuda"`: fp32, or `fp16=True` for autocast; `graph_batches`
    captures one CUDA graph per batch size on first use, and a smaller batch is zero-padded up to the
    nearest captured size (eval-mode BatchNorm keeps rows independent, so padding never changes results)."""

    def __init__(self, model: torch.nn.Module, classes: list[str], spec: ClipSpec, device: str = "cpu",
                 fp16: bool = False, graph_batches: tuple[int, ...] = ()):
        if device == "cpu" and (fp16 or graph_batches):
            raise ValueError("fp16 autocast and CUDA graphs need device='cuda'")
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.classes, self.spec = list(classes), spec
        self.fp16 = fp16
        self.graph_batches = tuple(sorted(graph_batches))
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, tuple]] = {}
        self.backend = "torch-cpu" if device == "cpu" else "torch-cuda-fp16" if fp16 else "torch-cuda"
        if self.graph_batches:
            self.backend += "-graphs"

    def _forward(self, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16, cache_enabled=False):
            out = self.model(audio, video)
        return tuple(out[o].float() for o in OUTPUTS)

    def _logits(self, audio: np.ndarray, video: np.ndarray) -> dict[str, np.ndarray]:
        b = len(audio)
        size = next((s for s in self.graph_batches if s >= b), None)
        with torch.inference_mode():
            if size is None:
                a = torch.from_numpy(audio).to(self.device, non_blocking=True)
                v = torch.from_numpy(video).to(self.device, non_blocking=True)
                outs = self._forward(a, v)
            else:
                graph, static_a, static_v, static_out = self._graph(size)
                static_a[:b].copy_(torch.from_numpy(audio), non_blocking=True)
                static_v[:b].copy_(torch.from_numpy(video), non_blocking=True)
                if b < size:
                    static_a[b:].zero_()
                    static_v[b:].zero_()
                graph.replay()
                outs = tuple(o[:b] for o in static_out)
            return {o: t.cpu().numpy() for o, t in zip(OUTPUTS, outs)}

    def _graph(self, size: int):
        """Capture (once) a CUDA graph of the forward pass at batch `size`, after warm-up on a side stream."""
        if size not in self._graphs:
            static_a = torch.zeros((size, 1, *self.spec.spectrogram_shape), device=self.device)
            static_v = torch.zeros((size, *self.spec.frames_shape), device=self.device)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    self._forward(static_a, static_v)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_a, static_v)
            self._graphs[size] = (graph, static_a, static_v, static_out)
        return self._graphs[size]
