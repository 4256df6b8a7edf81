"""The `torch-compile` backend: PyTorch's inductor compiler with frozen weights, static shapes.

Compiling takes seconds per batch size, so it happens when the predictor is made, for the batch sizes it is
told it will see, and the time is reported (`describe()["compile_seconds"]`), never inside a timing. A batch
size it was not prepared for compiles on its first call, and that is recorded too. Inductor's cache goes to
a folder optcv controls (`<optcv cache>/inductor`), not a temporary one, so a second run reuses it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optcv.data import IMAGE_SHAPE
from optcv.models import Checkpoint
from optcv.runtime import check_images, release_torch_settings, use_torch_settings

COMPILE_MODE = "max-autotune-no-cudagraphs"
# Compiled and every call with oneDNN on (PyTorch's default): a convolution inductor leaves to eager picks its
# output layout from the flag at call time, while the compiled code checks the layout it was traced with; so
# another predictor's flag (pytorch turns it off) must not reach this one.
ONEDNN = True


@contextmanager
def inductor_settings(cache_dir: Path) -> Iterator[None]:
    """Frozen weights and optcv's cache folder while compiling; the process's settings restored after."""
    import torch._inductor.config as inductor_config

    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    try:
        with inductor_config.patch(freezing=True):
            yield
    finally:
        if before is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


class CompiledTorchPredictor:
    def __init__(self, checkpoint: Checkpoint, threads: int, batch_sizes: Sequence[int] = (1,),
                 mode: str = COMPILE_MODE, cache_dir: Path | None = None, name: str = "torch-compile"):
        from optcv.data import default_cache_dir

        self.name = name
        self.classes = checkpoint.classes
        self.threads = threads
        self.mode = mode
        self.cache_dir = cache_dir or default_cache_dir() / "inductor"
        model = checkpoint.build_inference()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.compiled = torch.compile(model, mode=mode, dynamic=False, fullgraph=True)
        self.compile_seconds: dict[int, float] = {}
        for batch in batch_sizes:
            self._compile_for(batch)

    def _compile_for(self, batch: int) -> None:
        started = time.perf_counter()
        with inductor_settings(self.cache_dir):
            self._run(np.zeros((batch, *IMAGE_SHAPE), dtype=np.uint8))
        self.compile_seconds[batch] = time.perf_counter() - started

    def _run(self, images: np.ndarray) -> np.ndarray:
        use_torch_settings(self, self.threads, mkldnn=ONEDNN)
        with torch.inference_mode():
            return self.compiled(torch.from_numpy(images)).numpy()

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = check_images(images)
        if len(images) not in self.compile_seconds:
            self._compile_for(len(images))
        return self._run(images)

    def close(self) -> None:
        release_torch_settings(self)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "runtime": f"torch {torch.__version__} inductor", "threads": self.threads,
                "mode": self.mode, "mkldnn": ONEDNN, "freezing": True, "dynamic": False,
                "compile_seconds": {str(b): round(s, 2) for b, s in self.compile_seconds.items()}}
