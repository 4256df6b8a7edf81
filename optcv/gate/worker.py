"""The A/B gate's worker: run by each side's interpreter with that side's source tree first on sys.path.

It is the measuring harness, not code under test, so both sides run this same file (the head's) while
every model, export, predictor and training step comes from the side's own `optcv`. It talks JSON lines:
`build` trains and exports the reference models with the side's code (cached by a hash of that code and
its versions); `serve` answers set-up, warm-up, timing and profiling requests one at a time, so the gate
decides which worker runs when; `memory` measures each case's resident memory in a child of its own;
`instructions` runs the cases under callgrind. Only the standard library and NumPy are imported before the
side's optcv.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]  # run as a script: this folder must not shadow the side's packages

import hashlib  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

# The recipes come with the build request (optcv.gate.config.build_recipes, from the reference registry);
# this version changes when the way a recipe is built here does.
RECIPE_VERSION = 3
TRAIN_STEP_IMAGES = 64  # images per timed training call: one step at batch 64

# Where each module lives in the side's optcv: the package layout, then the flat layout of the revisions
# before it, so that a gate can still time a base revision from before the move.
SIDE_MODULES: dict[str, tuple[str, ...]] = {
    "models": ("optcv.training.models", "optcv.models"),
    "train": ("optcv.training.train", "optcv.train"),
    "export": ("optcv.backends.onnx_export", "optcv.export"),
    "runtime": ("optcv.runtime",),
    "quantize": ("optcv.backends.onnxruntime_int8", "optcv.quantize"),
    "data": ("optcv.data",),
    "cache": ("optcv.cache",),
    "declarations": ("optcv.declared.config",),
    "declared_inputs": ("optcv.declared.inputs",),
}
# The case being run, for the self-test's injected extra work (optcv.gate.inject), which is sized per case.
CASE_VARIABLE = "OPTCV_GATE_CASE"
DECLARED_INPUTS = 16  # distinct inputs a declared model's case cycles through (at least one batch)


def side_module(name: str) -> Any:
    """The side's module for `name`, in whichever layout the side has."""
    for candidate in SIDE_MODULES[name]:
        try:
            return importlib.import_module(candidate)
        except ModuleNotFoundError as exc:
            if not (exc.name and candidate.startswith(exc.name)):
                raise  # the module exists and something it imports is missing: the side's own error
    raise ModuleNotFoundError(f"this side's optcv has none of {', '.join(SIDE_MODULES[name])}")


def _side_code_hash() -> str:
    """A hash of every source file of the side's optcv, by its path inside the package."""
    import optcv

    root = Path(optcv.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("torch", "onnxruntime", "onnx", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _model_config(recipe: dict[str, Any]) -> Any:
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in recipe["config"].items()}
    return side_module("models").config_from_dict(recipe["arch"], config)


def build(request: dict[str, Any]) -> dict[str, Any]:
    """Train and export each requested model with this side's code, or reuse its cached copy; quantise it
    where the recipe asks (its int8 twin beside the ONNX file, made again when the settings change)."""
    code, versions = _side_code_hash(), _versions()
    data: list[Any] = []  # loaded once, on first need
    built = {}
    for name, recipe in request["models"].items():
        if "declared" in recipe:
            built[name] = _build_declared(recipe, Path(request["tree"]), Path(request["cache_dir"]))
            continue
        fp32 = {k: v for k, v in recipe.items() if k != "int8"}
        material = json.dumps({"recipe": fp32, "recipe_version": RECIPE_VERSION, "code": code,
                               "versions": versions}, sort_keys=True)
        key = hashlib.sha256(material.encode()).hexdigest()[:16]
        folder = Path(request["cache_dir"]) / "gate-artifacts" / f"{name}-{key}"
        checkpoint, onnx_path = folder / "model.pt", folder / "model.onnx"
        if not (checkpoint.is_file() and onnx_path.is_file()):
            _train_and_export(fp32, checkpoint, onnx_path, _data(request, data))
            (folder / "key.json").write_text(material)
        if "int8" in recipe:
            _quantize(recipe["int8"], onnx_path, lambda: _data(request, data))
        side_module("cache").mark_used(folder)
        built[name] = {"checkpoint": str(checkpoint), "onnx": str(onnx_path)}
    return {"models": built, "code_hash": code, "versions": versions, "optcv_file": _optcv_file()}


def _declared_model(entry: dict[str, Any]) -> Any:
    """A user's model as this side's revision declares it, to be built for the backends the gate needs."""
    import dataclasses

    path = Path(entry["tree"]) / entry["declarations"]
    if not path.is_file():
        raise RuntimeError(f"this revision has no {entry['declarations']}, so it declares no model "
                           f"{entry['declared']!r}")
    models = side_module("declarations").load_declarations(path)
    if entry["declared"] not in models:
        raise RuntimeError(f"this revision's {entry['declarations']} declares no model {entry['declared']!r} "
                           f"(it declares {', '.join(models)})")
    return dataclasses.replace(models[entry["declared"]], backends=tuple(entry["backends"]))


def _build_declared(recipe: dict[str, Any], tree: Path, cache_dir: Path) -> dict[str, Any]:
    """A declared model built from this side's tree (exported, quantised, cached by its code and weights); its
    factory's module must come from that tree, or both sides would time the same code."""
    entry = {**recipe, "tree": str(tree), "cache_dir": str(cache_dir)}
    model = _declared_model(entry)
    source = side_module("runtime").declared_source(model, cache_dir)
    if model.factory is not None:
        _check_factory_origin(sys.modules[model.factory.split(":")[0]], tree)
    return {**entry, "onnx": str(source.onnx)}


_DECLARED: dict[str, Any] = {}


def _declared_source(entry: dict[str, Any]) -> tuple[Any, Any]:
    """(the declared model, its ModelSource), built once per worker: every case of a model shares them (the
    factory, its forward check and the weights' digest cost seconds on an ImageNet-sized net)."""
    if entry["declared"] not in _DECLARED:
        model = _declared_model(entry)
        _DECLARED[entry["declared"]] = model, side_module("runtime").declared_source(model, Path(entry["cache_dir"]))
    return _DECLARED[entry["declared"]]


def _check_factory_origin(module: Any, tree: Path) -> None:
    """The factory's module comes from this side's tree, or from an installed package (torchvision's models:
    the same on both sides by right). From anywhere else (an editable install, a path on PYTHONPATH) the base
    would run the working tree's code, and the gate would compare the head with itself."""
    import sysconfig

    origin = Path(getattr(module, "__file__", None) or "?").resolve()
    installed = [Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")]
    if not any(origin.is_relative_to(folder) for folder in (tree.resolve(), *installed)):
        raise RuntimeError(f"the factory's module {module.__name__} was imported from {origin}, outside this "
                           f"side's tree {tree} and the installed packages; declare a module inside the repository "
                           "that is importable from the declaring file's folder")


def _data(request: dict[str, Any], loaded: list[Any]) -> Any:
    if not loaded:
        loaded.append(side_module("data").load_cifar10(request["data_dir"], progress=False))
    return loaded[0]


def _train_and_export(recipe: dict[str, Any], checkpoint: Path, onnx_path: Path, data: Any) -> None:
    data_module, models, train = side_module("data"), side_module("models"), side_module("train")
    model_config = _model_config(recipe)
    config = train.TrainConfig(recipe["optimizer"], lr=recipe["lr"], epochs=recipe["epochs"],
                               batch_size=recipe["batch_size"], seed=recipe["seed"])
    model = models.build_model(model_config, seed=recipe["seed"])
    subset = data_module.stratified_subset(data.train, recipe["train_images"], seed=0)
    train.train(model, subset, data_module.stratified_subset(data.test, 500, seed=0), config, progress=False)
    info = {"trained_for": "gate"}
    models.save_checkpoint(checkpoint, models.Checkpoint(model_config, model.state_dict(), info=info))
    side_module("export").export_onnx(checkpoint, onnx_path, check_images=data.test.images[:64].numpy())


def _quantize(settings: dict[str, Any], onnx_path: Path, data: Any) -> None:
    try:
        quantize = side_module("quantize")
    except ModuleNotFoundError:
        raise RuntimeError("this side has no onnxruntime-int8 backend (no optcv quantisation module)") from None
    recorded = onnx_path.parent / "int8-settings.json"
    wanted = json.dumps(settings, sort_keys=True)
    if quantize.int8_path(onnx_path).is_file() and recorded.is_file() and recorded.read_text() == wanted:
        return
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
    calibration = side_module("data").stratified_subset(data().train, fields["calibration_images"], seed=1)
    quantize.quantize_onnx(onnx_path, calibration.images.numpy(), settings=quantize.QuantizeSettings(**fields))
    recorded.write_text(wanted)


def _optcv_file() -> str:
    import optcv

    return str(Path(optcv.__file__).resolve())


_START_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def case_cpus(threads: int) -> set[int]:
    """The CPUs a case runs on: every worker of both sides on the same ones.

    Left to the scheduler, a worker tends to stay on the vCPU it last ran on, and on a shared VM one vCPU
    can be steadily slower than the other (its host core's neighbours). Pinning every worker to the same
    `threads` CPUs takes that out of the comparison. (It came in with the malloc setting in ab.MALLOC_ENV,
    which measurably closed the gap between processes; pinning's own share was not measured apart.)
    """
    return set(_START_CPUS[-threads:]) if len(_START_CPUS) > threads else set(_START_CPUS)


def pin_threads(cpus: set[int]) -> None:
    """Every thread of this process (the runtimes' pools included) onto `cpus`."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # a thread that ended meanwhile
            pass


class Case:
    """One timed case inside a worker: a callable of one call's work, and what it needs."""

    def __init__(self, spec: dict[str, Any], artifacts: dict[str, Any], inputs: dict[str, np.ndarray]):
        self.spec = spec
        self.cpus = case_cpus(spec["threads"])
        model = artifacts["models"][spec["model"]]
        if spec.get("declared"):
            self._setup_declared(model)
        elif spec["kind"] == "predict":
            self._setup_predict(model, inputs["predict_images"])
        else:
            self._setup_train(model, inputs["train_images"], inputs["train_labels"])

    def _setup_predict(self, model: dict[str, str], images: np.ndarray) -> None:
        source = side_module("runtime").ModelSource(Path(model["checkpoint"]), Path(model["onnx"]))
        self._use_predictor(source, images, model["onnx"])

    def _setup_declared(self, entry: dict[str, Any]) -> None:
        """A declared model's predictor, on inputs drawn from its declaration (the same seed on both sides)."""
        model, source = _declared_source(entry)
        count = max(1, DECLARED_INPUTS // self.spec["batch"]) * self.spec["batch"]
        images = side_module("declared_inputs").sample_inputs(model.input, count, seed=0)
        self._use_predictor(source, images, entry["onnx"])

    def _use_predictor(self, source: Any, images: np.ndarray, onnx_path: str) -> None:
        batch = self.spec["batch"]
        # A compiling backend prepares the case's batch size here, in the set-up, never inside a timing.
        options = {"batch_sizes": (batch,)} if self.spec["backend"] == "torch-compile" else {}
        self.source = source
        self.predictor = side_module("runtime").make_predictor(self.spec["backend"], source, self.spec["threads"],
                                                               **options)
        self.inputs = [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)]
        self.position = 0
        self.settings = self.predictor.describe()
        self.onnx_path = onnx_path

    def _setup_train(self, model: dict[str, str], images: np.ndarray, labels: np.ndarray) -> None:
        import torch

        Split = side_module("data").Split  # noqa: N806
        self.model = side_module("models").load_checkpoint(model["checkpoint"]).build()
        n = TRAIN_STEP_IMAGES
        self.split = Split(torch.from_numpy(images[:n].copy()), torch.from_numpy(labels[:n].astype(np.int64)))
        self.eval_split = Split(torch.from_numpy(images[n:n + 10].copy()),
                                torch.from_numpy(labels[n:n + 10].astype(np.int64)))
        self.train_config = side_module("train").TrainConfig("SGD", epochs=1, batch_size=self.spec["batch"], seed=0)
        self.settings = {"backend": "pytorch (training)", "threads": self.spec["threads"],
                         "optimizer": "SGD", "images_per_call": n, "batch_size": self.spec["batch"]}

    def call(self) -> None:
        if self.spec["kind"] == "predict":
            x = self.inputs[self.position]
            self.position = (self.position + 1) % len(self.inputs)
            self.predictor.predict(x)
        else:
            import torch

            train_module = side_module("train")  # looked up per call: the self-test's injection replaces train
            if torch.get_num_threads() != self.spec["threads"]:
                torch.set_num_threads(self.spec["threads"])
            train_module.train(self.model, self.split, self.eval_split, self.train_config, progress=False)

    def time(self, calls: int) -> list[int]:
        pin_threads(self.cpus)
        clock = time.perf_counter_ns
        out = []
        for _ in range(calls):
            t0 = clock()
            self.call()
            out.append(clock() - t0)
        return out


def profile(case: Case, calls: int) -> dict[str, Any]:
    """Per-operator time per call (ONNX Runtime's own profiler for its backends, torch.profiler otherwise) and
    the time of the same profiled calls outside every operator (never below zero), so what lies outside the
    operators shows and both add up to the profiled call."""
    pin_threads(case.cpus)
    session = getattr(getattr(case, "predictor", None), "session", None)
    if case.spec["kind"] == "predict" and case.spec["backend"].startswith("onnxruntime") and session is not None:
        ops, wall_us = _ort_profile(case, session, calls)
    else:
        ops, wall_us = _torch_profile(case, calls)
    return {"ops_us_per_call": ops, "wall_us_per_call": wall_us,
            "outside_us_per_call": max(0.0, wall_us - sum(ops.values()))}


def _timed_calls(case: Case, calls: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(calls):
        case.call()
    return (time.perf_counter_ns() - started) / 1000 / calls


def _torch_profile(case: Case, calls: int) -> tuple[dict[str, float], float]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        wall_us = _timed_calls(case, calls)
    ops = {e.key: e.self_cpu_time_total / calls for e in prof.key_averages() if e.self_cpu_time_total > 0}
    return ops, wall_us


def _ort_profile(case: Case, session: Any, calls: int) -> tuple[dict[str, float], float]:
    # Profiling cannot be switched on in the predictor's own session: a twin with the same model file and
    # threads takes its place for the profiled calls, so the side's whole predict path runs around it. Its trace
    # goes to a folder of its own: ONNX Runtime's default is the working directory, the user's repository.
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(case.settings.get("threads") or 1)
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.log_severity_level = 3
    model_path = getattr(session, "_model_path", None) or case.onnx_path
    with tempfile.TemporaryDirectory(prefix="optcv-ort-profile-") as folder:
        options.profile_file_prefix = str(Path(folder) / "twin")
        twin = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        case.predictor.session = twin
        try:
            wall_us = _timed_calls(case, calls)
        finally:
            case.predictor.session = session
            trace = Path(twin.end_profiling())
        return _ort_operator_totals(json.loads(trace.read_text()), calls), wall_us


def _ort_operator_totals(events: list[dict[str, Any]], calls: int) -> dict[str, float]:
    totals: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", event["name"])
            totals[op] = totals.get(op, 0.0) + float(event.get("dur", 0)) / calls
    return totals


def _status_kib(field: str) -> int:
    """A line of /proc/self/status in KiB (VmRSS: resident now; VmHWM: the peak since the last reset)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
        clear_refs.write("5")  # VmHWM := VmRSS (Linux >= 4.0)


def footprint(spec: dict[str, Any], artifacts: dict[str, Any], inputs: dict[str, np.ndarray], calls: int,
              warmup: int) -> dict[str, Any]:
    """One case's memory in this (fresh, forked) process: the peak resident memory the case added over its set-up,
    `warmup` calls and `calls` more, and what stayed resident per call after the warm-up."""
    os.environ[CASE_VARIABLE] = spec["id"]
    _reset_peak()
    before = _status_kib("VmRSS")
    case = Case(spec, artifacts, inputs)
    for _ in range(warmup):
        case.call()
    warm = _status_kib("VmRSS")
    counter = _allocation_counter()
    bytes_before, blocks_before = counter.optcv_allocated_bytes(), counter.optcv_allocated_blocks()
    for _ in range(calls):
        case.call()
    bytes_after, blocks_after = counter.optcv_allocated_bytes(), counter.optcv_allocated_blocks()
    return {"peak_kib": _status_kib("VmHWM") - before, "after_setup_and_warmup_kib": warm - before,
            "retained_kib_per_call": (_status_kib("VmRSS") - warm) / calls,
            "allocated_bytes_per_call": (bytes_after - bytes_before) / calls,
            "allocated_blocks_per_call": (blocks_after - blocks_before) / calls}


def _allocation_counter() -> Any:
    """The counting malloc preloaded into this memory worker (optcv.gate.memory.ALLOCATION_COUNTER)."""
    import ctypes

    process = ctypes.CDLL(None)
    try:
        counter = process.optcv_allocated_bytes, process.optcv_allocated_blocks
    except AttributeError:
        raise RuntimeError("the allocation counter is not preloaded (LD_PRELOAD) into this memory worker") from None
    for function in counter:
        function.restype = ctypes.c_ulonglong
    return process


def in_child(work: Any) -> dict[str, Any]:
    """`work()`'s answer, computed in a forked child so that nothing the parent held or freed counts."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer through the pipe, then leave without running the parent's clean-up
        os.close(read_end)
        try:
            answer = work()
        except Exception as exc:  # reported to the gate as a set-up error of this side
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        with os.fdopen(write_end, "w") as pipe:
            pipe.write(json.dumps(answer))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    return json.loads(text) if text else {"error": f"the measuring child ended with status {status}"}


def _import_runtimes() -> None:
    """What any case imports, imported before the fork, so that it is in every child alike and in no footprint."""
    side_module("runtime")
    side_module("train")
    for name in ("torch", "onnxruntime", "openvino"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def serve_memory(stdin: Any, reply: Any) -> None:
    """`setup` keeps the inputs and artifacts; each `memory` request measures one case in a fresh child."""
    held: dict[str, Any] = {}
    for line in stdin:
        request = json.loads(line)
        try:
            if request["op"] == "setup":
                held = {"inputs": {name: np.load(path) for name, path in request["inputs"].items()},
                        "artifacts": request["artifacts"]}
                _import_runtimes()
                answer: dict[str, Any] = {"pid": os.getpid(), "threads": len(os.listdir("/proc/self/task"))}
            elif request["op"] == "memory":
                answer = in_child(lambda r=request, h=held: footprint(r["spec"], h["artifacts"], h["inputs"],
                                                                      r["calls"], r["warmup"]))
            elif request["op"] == "exit":
                return
            else:
                answer = {"error": f"unknown request {request['op']!r}"}
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        reply.write(json.dumps(answer) + "\n")
        reply.flush()


def _count_calls(client: Any, case: Case, label: str, warmup: int, calls: int) -> None:
    """`warmup` uncounted calls, then `calls` counted ones dumped under `label`."""
    import gc

    for _ in range(warmup):  # one-off growth (an arena's next block) before counting
        case.call()
    gc.collect()
    gc.disable()  # as timeit does: a collection falls into one process's counted calls and not another's
    # The GIL is handed over every 5 ms of wall time while another thread waits for it: under valgrind that is
    # a number of hand-overs that moves with the machine's load (PyTorch's call: +-0.7 % between processes).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e6)
    client.optcv_callgrind_start()
    for _ in range(calls):
        case.call()
    client.optcv_callgrind_stop(label.encode())
    sys.setswitchinterval(interval)
    gc.enable()


def _macs_per_call(case: Case) -> int | None:
    """Multiply-accumulates of one call of the case's net, by the side's own counter; None where there is no
    PyTorch net to count (an ONNX-only declared model) or the side's revision has no counter."""
    import torch

    models = side_module("models")
    if not hasattr(models, "count_macs") or case.spec["kind"] != "predict":
        return None
    source, spec = case.source, case.source.input_spec
    if source.declared is not None:
        net, dtype = source.declared.build_inference(), getattr(torch, spec.dtype)
    elif source.checkpoint is not None:
        net, dtype = models.load_checkpoint(source.checkpoint).build(), torch.float32
    else:
        return None
    shape = (case.spec["batch"], *(spec.shape if spec is not None else (3, 32, 32)))
    return int(models.count_macs(net, shape, dtype))


def counted_calls(macs: int | None, request: dict[str, Any]) -> int:
    """Calls to count: enough for `counted_macs` multiply-accumulates, within [min_calls, max_calls] (a call's
    time under valgrind grows with its arithmetic: optcv.gate.instructions). The same net gets the same number
    on both sides."""
    if not macs:
        return int(request["max_calls"])
    return max(int(request["min_calls"]), min(int(request["max_calls"]), -(-int(request["counted_macs"]) // macs)))


def count_instructions(request: dict[str, Any]) -> dict[str, Any]:
    """Under callgrind with instrumentation off: per case, set up and warm up, then count `calls` calls, dumped
    under the case's name (optcv.gate.instructions). A case whose call is too slow under valgrind is left out."""
    import ctypes
    import gc

    client = ctypes.CDLL(request["library"])
    client.optcv_callgrind_stop.argtypes = [ctypes.c_char_p]
    inputs = {name: np.load(path) for name, path in request["inputs"].items()}
    calls: dict[str, int] = {}
    warmup_s: dict[str, float] = {}
    case_s: dict[str, float] = {}
    for spec in request["cases"]:
        case_started = time.perf_counter()
        os.environ[CASE_VARIABLE] = spec["id"]
        case = Case(spec, request["artifacts"], inputs)
        case.call()  # its first call may set up (OpenVINO compiles here): not the call's own time
        started = time.perf_counter()
        case.call()
        warmup_s[spec["id"]] = time.perf_counter() - started
        if warmup_s[spec["id"]] <= request["max_warmup_s"]:  # else counted, it would take minutes: reported
            calls[spec["id"]] = counted_calls(_macs_per_call(case), request)
            _count_calls(client, case, spec["id"], request["warmup_calls"], calls[spec["id"]])
        del case
        gc.collect()
        case_s[spec["id"]] = time.perf_counter() - case_started
    import torch

    return {"calls": calls, "warmup_s": warmup_s, "case_s": case_s,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def serve(stdin: Any, reply: Any) -> None:
    cases: dict[str, Case] = {}
    for line in stdin:
        request = json.loads(line)
        op = request["op"]
        try:
            if op == "setup":
                inputs = {name: np.load(path) for name, path in request["inputs"].items()}
                for spec in request["cases"]:
                    cases[spec["id"]] = Case(spec, request["artifacts"], inputs)
                answer: dict[str, Any] = {"optcv_file": _optcv_file(), "versions": _versions(), "pid": os.getpid(),
                                          "settings": {k: c.settings for k, c in cases.items()}}
            elif op == "time":
                os.environ[CASE_VARIABLE] = request["case"]
                answer = {"ns": cases[request["case"]].time(request["calls"])}
            elif op == "profile":
                answer = profile(cases[request["case"]], request["calls"])
            elif op == "exit":
                return
            else:
                answer = {"error": f"unknown request {op!r}"}
        except Exception as exc:  # reported to the gate as a set-up error of this side
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        reply.write(json.dumps(answer) + "\n")
        reply.flush()


def main() -> None:
    # Replies go through a private copy of stdout; anything a library prints goes to stderr instead.
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    one_shot = {"build": build, "instructions": count_instructions}
    if len(sys.argv) == 2 and sys.argv[1] in one_shot:
        try:
            answer = one_shot[sys.argv[1]](json.loads(sys.stdin.read()))
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        reply.write(json.dumps(answer) + "\n")
    elif sys.argv[1:] == ["serve"]:
        serve(sys.stdin, reply)
    elif sys.argv[1:] == ["memory"]:
        serve_memory(sys.stdin, reply)
    else:
        sys.exit("usage: worker.py build|serve|memory|instructions (JSON on standard input)")
    reply.flush()


if __name__ == "__main__":
    main()
