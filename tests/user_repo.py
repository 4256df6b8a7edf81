"""A user's repository in a temporary folder: their own package of networks, declared in their pyproject.toml."""

from __future__ import annotations

from pathlib import Path

import numpy as np

NETS = '''\
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, classes=5, width=4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.conv(x).relu().mean((2, 3)))


def build(classes=5, width=4):
    torch.manual_seed(0)
    return Tiny(classes, width)


def broken(**kwargs):
    raise RuntimeError("the factory is broken")
'''

TINY = """\
[tool.optcv.models.tiny]
factory = "usernets.nets:build"
kwargs = { classes = 5 }
input = { shape = [3, 16, 16], dtype = "float32", mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25] }
backends = ["pytorch", "onnxruntime"]
batch_sizes = [1, 4]
"""


def write_user_repo(root: Path, declarations: str = TINY) -> Path:
    """The repository's pyproject.toml, with `usernets/nets.py` beside it."""
    (root / "usernets").mkdir(parents=True, exist_ok=True)
    (root / "usernets" / "__init__.py").write_text("")
    (root / "usernets" / "nets.py").write_text(NETS)
    path = root / "pyproject.toml"
    path.write_text('[project]\nname = "their-app"\n\n' + declarations)
    return path


def write_images(folder: Path, count: int, size: tuple[int, int] = (24, 20), seed: int = 0) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def write_labelled(folder: Path, classes: int, per_class: int = 2) -> Path:
    for c in range(classes):
        write_images(folder / f"class{c}", per_class, seed=c)
    return folder


def write_onnx(path: Path, shape: tuple[int, ...] = (3, 16, 16), classes: int = 5) -> Path:
    """A plain ONNX classifier nobody here exported: flatten, then one matrix product."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    features = int(np.prod(shape))
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((features, classes)).astype(np.float32),
                                     "weight")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "weight"], ["y"])],
        "plain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def commit_history(root: Path, slower_forward: str) -> list[str]:
    """The user's repository as five commits: base; README only; `slower_forward` as the model's file; a comment
    in that file; README again. Their hashes, oldest first."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    write_user_repo(root)
    git("init", "-q", "-b", "main")
    commits = []
    for message, path, text in [("base", None, None), ("readme", "README.md", "# app\n"),
                                ("slower forward", "usernets/nets.py", slower_forward),
                                ("comment", "usernets/nets.py", slower_forward + "# why\n"),
                                ("readme again", "README.md", "# app, again\n")]:
        if path:
            (root / path).write_text(text)
        git("add", "-A")
        git("commit", "-q", "-m", message)
        commits.append(git("rev-parse", "HEAD"))
    return commits
