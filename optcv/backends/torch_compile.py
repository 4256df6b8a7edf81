"""The `torch-compile` backend: PyTorch's inductor compiler with frozen weights, static shapes.

Compiling takes seconds per batch size, so it happens when the predictor is made, for the batch sizes it is
told it will see, and the time is reported (`describe()["compile_seconds"]`), never inside a timing. A batch
size it was not prepared for compiles on its first call, and that is recorded too. Inductor's cache goes to
a folder optcv controls (`<optcv cache>/inductor`), not a temporary one, so a second run reuses it.
"""

from __future__ import annotations

import itertools
import os
import time
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optcv.backends.base import Closing, InferenceSource, check_input
from optcv.data import IMAGE_SHAPE, default_cache_dir
from optcv.errors import BackendCannotRun, OptcvError
from optcv.torch_settings import SettingsLease

COMPILE_MODE = "max-autotune-no-cudagraphs"
# Compiled and every call with oneDNN on (PyTorch's default): a convolution inductor leaves to eager picks its
# output layout from the flag at call time, while the compiled code checks the layout it was traced with; so
# another predictor's flag (pytorch turns it off) must not reach this one.
ONEDNN = True
_predictor_numbers = itertools.count()


class CompileFailed(BackendCannotRun):
    """torch.compile could not compile the model for a batch size: the work ran and failed (exit code 1). For a
    declared model, torch-compile is then unavailable for it, and the other backends run."""

    exit_code = 1

    def __init__(self, model: str, batch: int, reason: str):
        super().__init__("torch-compile", model, reason)
        OptcvError.__init__(self, f"torch.compile failed for batch size {batch} ({reason}); leave the torch-compile "
                                  "backend out or report it with the torch version")


def own_forward(model: torch.nn.Module) -> Callable[..., Any]:
    """`model.forward` bound to `model` through a code object of its own. Dynamo keeps compiled variants, and
    its limit of 8 recompiles, per code object: without this every model of one class in the process would
    share one list, a predictor would check the others' guards on every call, and the ninth compile (say a
    fifth model at two batch sizes) fails."""
    function = type(model).forward
    code = function.__code__.replace(co_name=f"{function.__name__}_optcv{next(_predictor_numbers)}")
    fresh = types.FunctionType(code, function.__globals__, code.co_name, function.__defaults__, function.__closure__)
    return fresh.__get__(model)


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


class CompiledTorchPredictor(Closing):
    def __init__(self, checkpoint: InferenceSource, threads: int, batch_sizes: Sequence[int] = (1,),
                 mode: str = COMPILE_MODE, cache_dir: Path | None = None, name: str = "torch-compile"):
        self.name = name
        self.classes = checkpoint.classes
        self.input_spec = checkpoint.input_spec
        self.threads = threads
        self._settings = SettingsLease(threads, ONEDNN)
        self.mode = mode
        self.cache_dir = cache_dir or default_cache_dir() / "inductor"
        model = checkpoint.build_inference()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.model = model
        self.compiled = torch.compile(own_forward(model), mode=mode, dynamic=False, fullgraph=True)
        self.compile_seconds: dict[int, float] = {}
        try:
            for batch in batch_sizes:
                self._compile_for(batch)
        except BaseException:
            self.close()  # give back the settings lease: a predictor that failed to compile is never used
            raise

    def _compile_for(self, batch: int) -> None:
        started = time.perf_counter()
        try:
            with inductor_settings(self.cache_dir):
                spec = self.input_spec
                shape, dtype = (IMAGE_SHAPE, "uint8") if spec is None else (spec.shape, spec.dtype)
                self._run(np.zeros((batch, *shape), dtype=dtype))
        except (torch._dynamo.exc.TorchDynamoException, torch._dynamo.exc.FailOnRecompileLimitHit,
                torch._inductor.exc.InductorError) as error:
            # Inductor's first line is often only "backend='inductor' raised:"; the cause is the next one.
            lines = [line for line in str(error).strip().splitlines() if line.strip() and not line.endswith("raised:")]
            reason = f"{type(error).__name__}: {lines[0] if lines else ''}"
            raise CompileFailed("the model", batch, reason) from error
        self.compile_seconds[batch] = time.perf_counter() - started

    def _run(self, images: np.ndarray) -> np.ndarray:
        self._settings.apply()
        with torch.inference_mode():
            return self.compiled(torch.from_numpy(images)).numpy()

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = check_input(images, self.input_spec)
        if len(images) not in self.compile_seconds:
            self._compile_for(len(images))
        return self._run(images)

    def close(self) -> None:
        self._settings.release()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "runtime": f"torch {torch.__version__} inductor", "threads": self.threads,
                "mode": self.mode, "mkldnn": ONEDNN, "freezing": True, "dynamic": False,
                "compile_seconds": {str(b): round(s, 2) for b, s in self.compile_seconds.items()}}
