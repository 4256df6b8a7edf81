"""A proof's runs, its arms interleaved and kept in a record file as they finish, so a re-run goes on from there."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from optcv._io import write_json
from optcv.env import environment_info


def run_interleaved(path: Path, entries: str, key: str, arms: Sequence[Any], repeats: int,
                    one: Callable[[Any, int], dict[str, Any]], line: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """`repeats` rounds of every arm, one after the other (so a slow hour falls on all of them); each run's entry
    (`one(arm, index)` with its `key` and index) appended to `record[entries]` and written at once."""
    record = json.loads(path.read_text()) if path.is_file() else {"environment": environment_info(), entries: []}
    done = {(entry[key], entry["index"]) for entry in record[entries]}
    for index in range(repeats):
        for arm in arms:
            if (arm, index) in done:
                continue
            record[entries].append({key: arm, "index": index, **one(arm, index)})
            write_json(path, record)
            print(line(record[entries][-1]), flush=True)
    return record
