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


# Instruction-set flags that change which kernels a runtime picks, so timings across them do not compare.
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
             "amx_bf16")


def isa_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in ISA_FLAGS if flag in present]
    except OSError:
        pass
    return []


def machine_fingerprint() -> dict[str, Any]:
    """What must match for timings from two runs to be compared: CPU, ISA, cores, Python and runtimes."""
    versions = package_versions()
    return {"cpu": cpu_model(), "isa": isa_flags(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": versions["torch"], "onnxruntime": versions["onnxruntime"]}


MACHINE_FIELDS = ("cpu", "isa", "cpu_count")  # a difference here makes timings incomparable, not just different


def same_machine(differences: list[str]) -> bool:
    return not any(d.split(":", 1)[0] in MACHINE_FIELDS for d in differences)


def fingerprint_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Each field where a recorded environment differs from this one ('field: recorded → now'); a field
    the recording lacks is reported as unknown, never assumed equal."""
    flat = {**recorded, **recorded.get("versions", {}), **recorded.get("fingerprint", {})}
    differences = []
    for key, now in current.items():
        if key not in flat:
            differences.append(f"{key}: not recorded → {now}")
        elif flat[key] != now:
            differences.append(f"{key}: {flat[key]} → {now}")
    return differences


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask; os.cpu_count() counts the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
