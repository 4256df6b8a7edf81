"""Latency, the machine's limits, the settings search and `optcv how-fast`: their tables."""

from __future__ import annotations

from typing import Any

from optcv.env import describe_environment
from optcv.report.tables import markdown_table, speedup_text, throughput_text


def latency_rows(bench: dict[str, Any]) -> list[dict[str, Any]]:
    """The course's latency table from a bench result (BenchResult.to_dict(), as results.json keeps it), per
    backend: µs per prediction, the speed-up over the first backend, batched images/s."""
    reference = next(iter(bench["backends"]))
    ratios = {r["backend"]: r for r in bench["ratios"].values()}
    rows = []
    for name, values in bench["backends"].items():
        latency = values["latency_us"]
        row: dict[str, Any] = {
            "backend": name,
            "threads": values["settings"].get("threads"),
            "predictions": latency["n"],
            "mean µs": latency["mean_us"],
            "median µs": latency["median_us"],
            "p95 µs": latency["p95_us"],
            f"speed-up vs {reference} (95% CI)": "1 (reference)" if name == reference else
            speedup_text(ratios[name]["ratio"], ratios[name]["ci_low"], ratios[name]["ci_high"]),
        }
        for batch, t in values["throughput"].items():
            row[f"images/s @{batch} (95% CI)"] = throughput_text(t)
        rows.append(row)
    return rows


def limits_rows(limits: Any) -> list[dict[str, Any]]:
    """Per backend and batch size: time per image, achieved GMAC/s, % of the GEMM peak, and what bounds it."""
    rows = []
    for r in limits.rows:
        bound = {None: "—", True: "overhead", False: "compute"}[r.overhead_bound]
        rows.append({"backend": r.backend, "batch": r.batch_size, "threads": r.threads, "µs/image": r.us_per_image,
                     "GMAC/s": r.achieved_gmac_per_s, "% of peak": f"{100 * r.peak_fraction:.1f} %",
                     "floor µs/call": r.compute_floor_us, "overhead µs/call": r.overhead_us, "bound by": bound})
    return rows


def limits_markdown(limits: Any) -> str:
    peaks = "; ".join(f"{p.gmac_per_s:.0f} GMAC/s ({p.source})" for p in limits.peaks.values())
    return "\n".join([
        markdown_table(limits_rows(limits)), "",
        f"{limits.model}: {limits.macs_per_image / 1e6:,.2f} MMAC per image. Peak: {peaks}. Floor: the call's MACs "
        "at that peak. Overhead: the same runtime running a model that computes nothing (batch 1). A backend whose "
        "overhead exceeds its floor is overhead-bound: faster kernels cannot help it."])


def search_rows(result: Any) -> list[dict[str, Any]]:
    """`optcv bench --search`'s grid: per backend and batch size, every setting's µs per image (median over
    rounds, 95 % interval), relative to that group's fastest, the kept one marked."""
    best = result.best()
    rows = []
    groups: dict[tuple[str, int], list[Any]] = {}
    for t in result.timings:
        groups.setdefault((t.backend, t.batch_size), []).append(t)
    for (backend, batch), timings in groups.items():
        fastest = min(t.median_us_per_image for t in timings)
        for t in sorted(timings, key=lambda t: t.median_us_per_image):
            rows.append({"backend": backend, "batch": batch,
                         "settings": ", ".join(f"{k}={v}" for k, v in t.settings.items()),
                         "µs per image": t.median_us_per_image,
                         "95% CI": f"{t.ci_low_us:,.1f}–{t.ci_high_us:,.1f}",
                         "vs fastest": f"{t.median_us_per_image / fastest:.2f}×",
                         "kept": "yes" if best[backend][batch] == t.settings else ""})
    return rows


def how_fast_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per model and backend: batch-1 µs per image and speed-up over PyTorch (95 % CI), what bounds batch 1,
    batched images/s, GMAC/s and % of the measured GEMM peak, and the model's accuracy."""
    rows = []
    for m in result["models"]:
        bench, limits = m["bench"], m["limits"]
        ratios = {r["backend"]: r for r in bench["ratios"].values()}
        by_key = {(r["backend"], r["batch_size"]): r for r in limits["rows"]}
        for backend, b in bench["backends"].items():
            one = by_key[(backend, 1)]
            batch, t = next(iter(b["throughput"].items()))
            batched = by_key[(backend, int(batch))]
            ratio = ratios.get(backend)
            rows.append({
                "model": m["model"], "accuracy": _accuracy_text(m["accuracy"].get("test_accuracy")),
                "backend": backend, "b1 µs/image": b["latency_us"]["median_us"], "b1 threads": one["threads"],
                "b1 vs pytorch": "1" if ratio is None else
                speedup_text(ratio["ratio"], ratio["ci_low"], ratio["ci_high"]),
                "b1 bound by": {None: "—", True: "overhead", False: "compute"}[one["overhead_bound"]],
                f"b{batch} images/s (95% CI)": throughput_text(t), f"b{batch} threads": batched["threads"],
                f"b{batch} GMAC/s": batched["achieved_gmac_per_s"],
                f"b{batch} % of peak": f"{100 * batched['peak_fraction']:.0f} %"})
    return rows


def _accuracy_text(accuracy: float | None) -> str:
    return "—" if accuracy is None else f"{100 * accuracy:.1f} %"


def how_fast_markdown(result: dict[str, Any]) -> str:

    # Each model's rows are set against the peak measured right after its own timings: on a shared machine
    # the readings differ by tens of percent through one run, so every one is shown.
    peak_text = "; ".join(f"{m['model']} " + ", ".join(f"{p['gmac_per_s']:.0f} at {t} thread(s)"
                                                      for t, p in sorted(m["limits"]["peaks"].items()))
                          for m in result["models"])
    sources = [p["source"].split(",")[0] for m in result["models"] for p in m["limits"]["peaks"].values()]
    source = sources[0] if sources else "none measured"
    macs = ", ".join(f"{m['model']} {m['limits']['macs_per_image'] / 1e6:,.2f}" for m in result["models"])
    calls = ", ".join(f"{m['model']} {m['bench']['config']['n_single']:,}" for m in result["models"])
    return "\n".join([markdown_table(how_fast_rows(result)), "",
                      f"Machine: {describe_environment(result['environment'])}. fp32 GEMM peak in GMAC/s, measured "
                      f"after each model's timings ({source}; % of peak is against its model's): {peak_text}. "
                      f"MMAC per image: {macs}. Single-image calls per backend, interleaved: {calls}; "
                      "speed-up = median over chunks of the per-chunk median ratio, 95 % bootstrap CI. Each "
                      "backend at its fastest calibrated setting; batched images/s: the median over interleaved "
                      "rounds of one backend after another, 95 % bootstrap CI. Accuracy: the reference model's own "
                      "test accuracy when it was built (optcv.measure.reference); — for a declared model. int8 rows "
                      "count their MACs against the fp32 peak, so they can pass 100 %: int8 kernels (VNNI, AMX) do "
                      "more MACs per cycle.",
                      *_compile_notes(result)])


def _compile_notes(result: dict[str, Any]) -> list[str]:
    """Compile times of the compiling backends, which no timing above includes."""
    notes = []
    for m in result["models"]:
        for backend, b in m["bench"]["backends"].items():
            settings = [b.get("settings", {}), *(t.get("settings", {}) for t in b["throughput"].values())]
            seconds = {batch: s for one in settings for batch, s in one.get("compile_seconds", {}).items()}
            if seconds:
                each = ", ".join(f"batch {size} {seconds[size]:.1f} s" for size in sorted(seconds, key=int))
                notes.append(f"{m['model']} / {backend}: compiled in {each} (outside every timing).")
    return ["", *notes] if notes else []
