"""TensorRT backend: deserialize an engine built by mmdeploy.tensorrt_engine and run it with
execute_async_v3, using torch CUDA tensors as device buffers (TensorRT 10 Python API)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mmdeploy.errors import BackendUnavailable
from mmdeploy.runtime.base import INPUTS, OUTPUT_NAMES, OUTPUTS, Predictor
from mmdeploy.spec import ClipSpec


class TensorRTPredictor(Predictor):
    def __init__(self, engine_path: str | Path, classes: list[str], spec: ClipSpec, max_batch: int | None = None):
        import tensorrt as trt
        import torch

        self.torch, self.trt = torch, trt
        self.classes, self.spec = list(classes), spec
        self.engine_path = Path(engine_path)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"{engine_path}: TensorRT could not deserialize the engine; rebuild it with "
                                     "`mmdeploy export RUN --trt`")
        self.context = self.engine.create_execution_context()
        self.precision = "fp16" if "_fp16_" in self.engine_path.name else "fp32"
        self.backend = f"tensorrt-{self.precision}"
        self.max_batch = max_batch or int(self.engine.get_tensor_profile_shape(INPUTS[0], 0)[2][0])
        self.stream = torch.cuda.Stream()

    def _logits(self, audio: np.ndarray, video: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        inputs = {"audio": torch.from_numpy(audio).cuda(), "video": torch.from_numpy(video).cuda()}
        for name, tensor in inputs.items():
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in OUTPUT_NAMES:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BackendUnavailable(f"{self.engine_path}: TensorRT execution failed")
        self.stream.synchronize()
        return {o: outputs[n].cpu().numpy() for o, n in zip(OUTPUTS, OUTPUT_NAMES)}
