"""Models nobody here wrote, in a repository of their own, gated with nothing but a declaration and the pytest
plugin (issue 20's proof): torchvision's ResNet-50 and MobileNetV3-large at 224×224, randomly initialised (no
weights can be downloaded here), and a plain ONNX file.

- A commit that slows ResNet-50's forward with a real extra operation (two 1×1 convolutions after layer1: +10.0 %
  of its multiply-accumulates) fails `pytest --optcv-gate-against HEAD~1` (the plugin's latency cases, each timed
  in both revisions' pytest sessions), naming ResNet-50's cases.
- A commit after it that changes only a comment in the same file passes (its code is timed, not skipped).
- `pytest --optcv` there passes: every installed backend agrees with the reference, and each latency case is in
  the pytest-benchmark JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optcv.training.models import count_macs
from tests.user_repo import write_onnx

ROOT = Path(__file__).resolve().parents[1]

NETS = '''\
"""Their networks: torchvision's, at ImageNet size."""
import torch
import torchvision


def resnet50(num_classes=1000):
    return torchvision.models.resnet50(weights=None, num_classes=num_classes)


def mobilenet(num_classes=1000):
    return torchvision.models.mobilenet_v3_large(weights=None, num_classes=num_classes)
'''
SLOWER = '''
def resnet50(num_classes=1000):
    net = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    # a refinement after layer1
    net.layer1.append(torch.nn.Conv2d(256, 256, 1, bias=False))
    net.layer1.append(torch.nn.Conv2d(256, 256, 1, bias=False))
    return net
'''
IMAGENET = 'input = { shape = [3, 224, 224], mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225] }'
DECLARATIONS = f'''\
[project]
name = "their-vision-app"

[tool.optcv.models.resnet50]
factory = "visionnets.models:resnet50"
{IMAGENET}
backends = ["pytorch", "onnxruntime", "openvino"]
agreement_inputs = 16

[tool.optcv.models.mobilenet]
factory = "visionnets.models:mobilenet"
{IMAGENET}
backends = ["pytorch", "onnxruntime", "openvino", "torch-compile"]
agreement_inputs = 16

[tool.optcv.models.plain]
onnx = "models/plain.onnx"
input = {{ shape = [3, 224, 224] }}
backends = ["onnxruntime", "openvino"]
'''
# The gate: ResNet-50 on every backend it declares, and one case of each other model (every case of all three
# took 6 minutes for the two gates here; these take about half). torch-compile is checked and timed by
# `pytest --optcv` but not gated: it compiles for 20-40 s in every worker.
GATE_CASES = ["resnet50/*", "mobilenet/onnxruntime/b1/t1", "plain/onnxruntime/b1/t1"]


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


def _pytest(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A fresh pytest, as the user starts it: none of this run's own (an xdist worker's PYTEST_XDIST_WORKER made
    # pytest-benchmark write no JSON).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env = {**env, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "-s",
                           *args], cwd=repo, env=env, capture_output=True, text=True, timeout=3600)


def _their_repository(root: Path) -> Path:
    (root / "visionnets").mkdir(parents=True)
    (root / "visionnets" / "__init__.py").write_text("")
    (root / "visionnets" / "models.py").write_text(NETS)
    (root / "models").mkdir()
    write_onnx(root / "models" / "plain.onnx", shape=(3, 224, 224), classes=10)
    (root / "pyproject.toml").write_text(DECLARATIONS)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "their models")
    return root


def _nominal_pct() -> float:
    import torchvision

    base = torchvision.models.resnet50(weights=None)
    head = torchvision.models.resnet50(weights=None)
    head.layer1.append(torch.nn.Conv2d(256, 256, 1, bias=False))
    head.layer1.append(torch.nn.Conv2d(256, 256, 1, bias=False))
    shape = (1, 3, 224, 224)
    return 100 * (count_macs(head, shape) / count_macs(base, shape) - 1)


def _gate(repo: Path, out: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, dict]]:
    """The latency cases of GATE_CASES gated against the parent commit; per case, what the gate JSON says."""
    done = _pytest(repo, "--optcv-gate-against", "HEAD~1", "--optcv-gate-json", str(out), "--optcv-gate-cases",
                   *GATE_CASES, "-k", "latency")
    tests = json.loads(out.read_text())["tests"]
    return done, {t["node"][t["node"].index("[") + 1:-1]: t for t in tests}


@pytest.mark.full
def test_a_users_repository_is_gated_and_checked_by_the_plugin(tmp_path, request):
    repo = _their_repository(tmp_path / "their-app")
    nets = repo / "visionnets" / "models.py"
    nets.write_text(NETS.split("\n\ndef resnet50")[0] + "\n" + SLOWER + "\n\ndef mobilenet" +
                    NETS.split("\n\ndef mobilenet")[1])
    _git(repo, "commit", "-q", "-am", "resnet50: refine layer1")
    slower, found = _gate(repo, tmp_path / "slower.json")
    (tmp_path / "slower.out").write_text(slower.stdout)  # the summary the README quotes
    failed = sorted(case for case, t in found.items() if t["verdict"] == "regression")
    changes = {case: round(t["finding"]["change_pct"], 1) for case, t in found.items() if t["gated"]}
    request.config._optcv_gate_lines += [f"user repository, ResNet-50 +{_nominal_pct():.1f} % MACs: {changes}"]
    assert slower.returncode == 1, slower.stdout[-3000:] + slower.stderr[-2000:]
    assert failed and all(c.startswith("resnet50/") for c in failed), changes
    assert "resnet50/" in slower.stdout and "FAILED" in slower.stdout

    nets.write_text(nets.read_text().replace("# a refinement after layer1", "# a refinement after layer1 (1x1)"))
    _git(repo, "commit", "-q", "-am", "a comment")
    comment, found = _gate(repo, tmp_path / "comment.json")
    assert comment.returncode == 0, comment.stdout[-3000:] + comment.stderr[-2000:]
    assert sum(t["gated"] for t in found.values()) == 5  # timed, not skipped: the file changed

    checked = _pytest(repo, "--optcv", "--benchmark-json", str(tmp_path / "bench.json"),
                      "--benchmark-max-time", "0.5")
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-2000:]
    timed = {b["extra_info"]["optcv_case"] for b in json.loads((tmp_path / "bench.json").read_text())["benchmarks"]}
    assert timed == {"resnet50/pytorch/b1/t1", "resnet50/onnxruntime/b1/t1", "resnet50/openvino/b1/t1",
                     "mobilenet/pytorch/b1/t1", "mobilenet/onnxruntime/b1/t1", "mobilenet/openvino/b1/t1",
                     "mobilenet/torch-compile/b1/t1", "plain/onnxruntime/b1/t1", "plain/openvino/b1/t1"}
