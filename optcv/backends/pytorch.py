"""PyTorch eager, at its best for inference: eval mode, no autograd, a set thread count."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from optcv.backends.base import Closing, InferenceSource, check_input
from optcv.env import usable_cores
from optcv.torch_settings import SettingsLease


class TorchPredictor(Closing):
    """oneDNN (mkldnn) convolutions cost more in per-call set-up than they save on a 32x32 image at batch 1
    on the reference nets (see ../shared/NOTES.md and `optcv bench`), so they are off by default here; the
    registry turns them on for a user's declared model (optcv.runtime), and mkldnn=True measures PyTorch's stock
    setting on any model.
    """

    def __init__(self, checkpoint: InferenceSource, threads: int | None = None, mkldnn: bool = False,
                 channels_last: bool = False, name: str = "pytorch"):
        self.name = name
        self.classes = checkpoint.classes
        self.input_spec = checkpoint.input_spec
        self.threads = threads or usable_cores()
        self.mkldnn = mkldnn
        self.channels_last = channels_last
        self._settings = SettingsLease(self.threads, mkldnn)
        self.model = checkpoint.build_inference()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = check_input(images, self.input_spec)
        self._settings.apply()
        with torch.inference_mode():
            x = torch.from_numpy(images)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.model(x).numpy()

    def close(self) -> None:
        self._settings.release()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "runtime": f"torch {torch.__version__}", "threads": self.threads,
                "mkldnn": self.mkldnn, "channels_last": self.channels_last, "mode": "eager, eval, inference_mode"}
