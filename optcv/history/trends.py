"""A case's history as the dashboard, `optcv history show` and `trend` see it: one series per machine (timings of
two machines are never one line), the steps found in each, and which of them made the case worse."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from optcv.history.records import HIGHER_IS_WORSE, Machine
from optcv.history.steps import Step, find_steps
from optcv.history.store import HistoryStore, Point


@dataclass(frozen=True)
class MachineSeries:
    machine: Machine
    points: tuple[Point, ...]
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class CaseTrend:
    case: str
    metric: str
    series: tuple[MachineSeries, ...]

    @property
    def points(self) -> int:
        return sum(len(s.points) for s in self.series)


@dataclass(frozen=True)
class FoundStep:
    """A step of one case on one machine, with the runs on either side of it (the range to bisect)."""

    case: str
    metric: str
    machine: Machine
    step: Step
    last_before: Point
    first_after: Point

    @property
    def worse(self) -> bool:
        return self.step.up == HIGHER_IS_WORSE.get(self.metric, True)


def case_trend(store: HistoryStore, case: str, metric: str, min_size: int | None = None) -> CaseTrend:
    by_machine: dict[str, list[Point]] = {}
    for point in store.series(case, metric):
        by_machine.setdefault(point.machine.key, []).append(point)
    series = []
    for points in by_machine.values():
        values = [p.measurement.value for p in points]
        lows, highs = [p.measurement.low for p in points], [p.measurement.high for p in points]
        steps = find_steps(values, lows, highs) if min_size is None else find_steps(values, lows, highs, min_size)
        series.append(MachineSeries(points[0].machine, tuple(points), tuple(steps)))
    return CaseTrend(case, metric, tuple(series))


def trends(store: HistoryStore, patterns: Sequence[str] = ("*",), metrics: Sequence[str] | None = None,
           min_size: int | None = None) -> list[CaseTrend]:
    """Every case (and metric) whose name matches one of `patterns`, each with its steps."""
    chosen = [(case, metric) for case, metric in store.cases()
              if any(fnmatch.fnmatchcase(case, p) for p in patterns) and (metrics is None or metric in metrics)]
    return [case_trend(store, case, metric, min_size) for case, metric in chosen]


def found_steps(case_trends: Sequence[CaseTrend]) -> list[FoundStep]:
    found = []
    for trend in case_trends:
        for series in trend.series:
            for step in series.steps:
                found.append(FoundStep(trend.case, trend.metric, series.machine, step,
                                       series.points[step.index - 1], series.points[step.index]))
    return sorted(found, key=lambda f: (not f.worse, -abs(f.step.change_pct)))


def new_worse_steps(case_trends: Sequence[CaseTrend]) -> list[FoundStep]:
    """The worse steps that each machine's newest run made claimable: found in its series as it is, not in the same
    series without its newest point. What a scheduled run should fail on: an older step is known, and was failed
    on when it became claimable."""
    new = []
    for trend in case_trends:
        for series in trend.series:
            values = [p.measurement.value for p in series.points[:-1]]
            lows = [p.measurement.low for p in series.points[:-1]]
            highs = [p.measurement.high for p in series.points[:-1]]
            before = {step.index for step in find_steps(values, lows, highs)} if len(values) > 1 else set()
            for step in series.steps:
                found = FoundStep(trend.case, trend.metric, series.machine, step, series.points[step.index - 1],
                                  series.points[step.index])
                if step.index not in before and found.worse:
                    new.append(found)
    return new
