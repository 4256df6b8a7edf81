"""What a number was measured on: machine, threads and library versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

PACKAGES = ("optcv", "torch", "torchvision", "onnx", "onnxruntime", "optuna", "numpy")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info() -> dict[str, Any]:
    import torch

    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        # Other work on a shared machine skews timings; the load when the numbers were taken says how much.
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "versions": package_versions(),
    }


def describe_environment(info: dict[str, Any] | None = None) -> str:
    info = info or environment_info()
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v != "not installed")
    return f"{info['cpu']} ({info['cpu_count']} cores), Python {info['python']}; {versions}"
