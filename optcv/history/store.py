"""The history database: every run and its per-case numbers, in SQLite (a file, the default) or PostgreSQL (a URL,
for a team), through SQLAlchemy as Optuna's storages do.

The schema carries its version; a database of an older version is migrated in place, step by step, inside one
locked transaction, never rebuilt. Writers may run at once: SQLite's writes take the database lock at BEGIN
(IMMEDIATE, with a busy timeout, in WAL mode so readers never wait), PostgreSQL's machine rows are inserted with
ON CONFLICT DO NOTHING and its migrations hold an advisory lock.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from optcv._io import default_cache_dir
from optcv.errors import OptcvError, first_line, missing_optional_module
from optcv.history.records import Machine, Measurement, RunRecord

SCHEMA_VERSION = 1
HISTORY_ENV = "OPTCV_HISTORY"  # where the commands record their runs: a path or a database URL
DEFAULT_FILE = "history.sqlite"
_MIGRATION_LOCK = 0x6F70_7463  # PostgreSQL advisory lock id: one migrating writer at a time ("optc")

metadata = sa.MetaData()
meta_table = sa.Table("optcv_meta", metadata, sa.Column("key", sa.String(64), primary_key=True),
                      sa.Column("value", sa.Text, nullable=False))
machines = sa.Table(
    "optcv_machines", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(32), nullable=False, unique=True),
    sa.Column("cpu", sa.Text, nullable=False),
    sa.Column("isa", sa.Text, nullable=False),  # JSON list
    sa.Column("cores", sa.Integer, nullable=False))
runs = sa.Table(
    "optcv_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("recorded_at", sa.String(32), nullable=False),  # ISO 8601 in UTC: sorts as text on every database
    sa.Column("machine_id", sa.Integer, sa.ForeignKey("optcv_machines.id"), nullable=False),
    sa.Column("commit", sa.String(64)),
    sa.Column("branch", sa.Text),
    sa.Column("versions", sa.Text, nullable=False),  # JSON object
    sa.Column("passed", sa.Boolean),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("details", sa.Text, nullable=False),  # JSON object
    sa.Index("ix_optcv_runs_commit", "commit"))
measurements = sa.Table(
    "optcv_measurements", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("optcv_runs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("case_name", sa.Text, nullable=False),
    sa.Column("metric", sa.String(32), nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("low", sa.Float),
    sa.Column("high", sa.Float),
    sa.Column("n", sa.Integer),
    sa.Column("verdict", sa.String(64)),
    sa.Column("threshold_pct", sa.Float),
    sa.Index("ix_optcv_measurements_case", "case_name", "metric"),
    sa.Index("ix_optcv_measurements_run", "run_id"))

# MIGRATIONS[v] takes a database of version v to v + 1, in the caller's transaction.
Migration = Callable[[Connection], None]
MIGRATIONS: dict[int, Migration] = {}


class HistoryError(OptcvError):
    """The history database cannot be opened, is of a newer optcv, or lacks what was asked of it."""


@dataclass(frozen=True)
class StoredRun:
    id: int
    record: RunRecord


@dataclass(frozen=True)
class Point:
    """One run's number for one case, with what a chart or a bisect needs to place it."""

    run_id: int
    kind: str
    recorded_at: datetime
    commit: str | None
    machine: Machine
    passed: bool | None
    measurement: Measurement


def default_location() -> str:
    return os.environ.get(HISTORY_ENV) or str(default_cache_dir() / DEFAULT_FILE)


def history_exists(location: str | Path | None) -> bool:
    """Whether there may be a history to read there: a database URL, or an SQLite file that exists (reading must
    not create one)."""
    text = str(location or default_location())
    return "://" in text or Path(text).expanduser().is_file()


def database_url(location: str | Path) -> str:
    """A path becomes an SQLite URL; a URL stays (postgresql:// is given psycopg 3, the driver optcv[postgres]
    installs)."""
    text = str(location)
    if "://" not in text:
        path = Path(text).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    if text.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    return text


class HistoryStore:
    """An open history database. Use as a context manager, or call close()."""

    def __init__(self, location: str | Path | None = None):
        self.url = database_url(location or default_location())
        try:
            self.engine = _engine(self.url)
        except ImportError as exc:
            missing = missing_optional_module(exc, f"the history database {_safe(self.url)}")
            raise missing or HistoryError(f"cannot open the history database {_safe(self.url)}: {first_line(exc)}; "
                                          "install its driver, or give another with --history") from exc
        try:
            with self.transaction() as conn:
                migrate(conn)
            if self.url.startswith("sqlite"):
                # WAL (readers never wait for a writer) is a property of the file: set once it is known to be ours.
                with self.engine.connect() as conn:
                    driver = conn.connection.driver_connection
                    assert driver is not None
                    driver.execute("PRAGMA journal_mode=WAL")
        except HistoryError:
            self.engine.dispose()
            raise
        except sa.exc.SQLAlchemyError as exc:
            self.engine.dispose()
            raise HistoryError(f"cannot open the history database {_safe(self.url)}: {first_line(exc)}; "
                               "give another with --history") from exc

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def safe_url(self) -> str:
        return _safe(self.url)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def add(self, record: RunRecord) -> int:
        """Store a run and its measurements in one transaction; its id."""
        with self.transaction() as conn:
            machine_id = _machine_id(conn, record.machine)
            run_id = conn.execute(runs.insert().values(
                kind=record.kind, recorded_at=_iso(record.recorded_at), machine_id=machine_id, commit=record.commit,
                branch=record.branch, versions=json.dumps(record.versions, sort_keys=True), passed=record.passed,
                summary=record.summary, source=record.source, details=json.dumps(record.details, default=str)
            ).returning(runs.c.id)).scalar_one()
            if record.measurements:
                conn.execute(measurements.insert(), [
                    {"run_id": run_id, "case_name": m.case, "metric": m.metric, "value": m.value, "low": m.low,
                     "high": m.high, "n": m.n, "verdict": m.verdict, "threshold_pct": m.threshold_pct}
                    for m in record.measurements])
        return int(run_id)

    def runs(self, kind: str | None = None, limit: int | None = None, run_id: int | None = None) -> list[StoredRun]:
        """Runs, oldest first (the newest `limit` of them when given)."""
        query = sa.select(runs, machines.c.cpu, machines.c.isa, machines.c.cores).join(machines)
        if kind:
            query = query.where(runs.c.kind == kind)
        if run_id is not None:
            query = query.where(runs.c.id == run_id)
        query = query.order_by(runs.c.recorded_at.desc(), runs.c.id.desc())
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
            found: dict[int, list[Measurement]] = {}
            ids = [r["id"] for r in rows]
            for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
                for m in conn.execute(sa.select(measurements).where(measurements.c.run_id.in_(chunk))
                                      .order_by(measurements.c.id)).mappings():
                    found.setdefault(m["run_id"], []).append(_measurement(m))
        return [StoredRun(r["id"], _record(r, found.get(r["id"], []))) for r in reversed(rows)]

    def run(self, run_id: int) -> StoredRun:
        match = self.runs(run_id=run_id)
        if not match:
            raise HistoryError(f"no run {run_id} in the history {_safe(self.url)}; `optcv history runs` lists them")
        return match[0]

    def machines(self) -> list[Machine]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(machines).order_by(machines.c.id)).mappings().all()
        return [_machine(r) for r in rows]

    def cases(self) -> list[tuple[str, str]]:
        """Every (case, metric) the history holds, sorted."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(measurements.c.case_name, measurements.c.metric).distinct()
                                .order_by(measurements.c.case_name, measurements.c.metric)).all()
        return [(r[0], r[1]) for r in rows]

    def series(self, case: str, metric: str) -> list[Point]:
        """A case's numbers across runs, oldest first."""
        query = (sa.select(measurements, runs.c.kind, runs.c.recorded_at, runs.c.commit, runs.c.passed,
                           machines.c.cpu, machines.c.isa, machines.c.cores)
                 .join(runs, measurements.c.run_id == runs.c.id).join(machines)
                 .where(measurements.c.case_name == case, measurements.c.metric == metric)
                 .order_by(runs.c.recorded_at, runs.c.id))
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [Point(r["run_id"], r["kind"], _when(r["recorded_at"]), r["commit"], _machine(r), r["passed"],
                      _measurement(r)) for r in rows]


def open_history(location: str | Path | None = None) -> HistoryStore:
    return HistoryStore(location)


def schema_version(conn: Connection) -> int | None:
    """The database's schema version; None for an empty database."""
    if not sa.inspect(conn).has_table(meta_table.name):
        return None
    value = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")).scalar()
    return int(value) if value is not None else None


def migrate(conn: Connection, target: int = SCHEMA_VERSION, steps: dict[int, Migration] | None = None) -> int:
    """Bring the database to `target`: create it when empty, else apply each step from its version on. Returns the
    version it was at."""
    steps = MIGRATIONS if steps is None else steps
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK})
    found = schema_version(conn)
    if found is None:
        others = sa.inspect(conn).get_table_names()
        if others:  # never write optcv's tables into another program's database
            raise HistoryError(f"the database holds tables of something else ({', '.join(sorted(others)[:4])}) and no "
                               "optcv history; give an empty or new database with --history")
        metadata.create_all(conn)
        conn.execute(meta_table.insert().values(key="schema_version", value=str(target)))
        return 0
    if found > target:
        raise HistoryError(f"the history database is of schema version {found}, newer than this optcv's {target}; "
                           "upgrade optcv, or give another database with --history")
    for version in range(found, target):
        if version not in steps:
            raise HistoryError(f"no migration from history schema version {version}; upgrade optcv")
        steps[version](conn)
    conn.execute(meta_table.update().where(meta_table.c.key == "schema_version").values(value=str(target)))
    return found


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # SQLAlchemy, not the driver, begins transactions
            dbapi_connection.execute("PRAGMA foreign_keys=ON")

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock now, not at the first write

        return engine
    return sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10}
                            if url.startswith("postgres") else {})


def _machine_id(conn: Connection, machine: Machine) -> int:
    values = {"key": machine.key, "cpu": machine.cpu, "isa": json.dumps(list(machine.isa)), "cores": machine.cores}
    insert = (postgresql.insert(machines) if conn.dialect.name == "postgresql" else sqlite.insert(machines))
    conn.execute(insert.values(**values).on_conflict_do_nothing(index_elements=["key"]))
    return int(conn.execute(sa.select(machines.c.id).where(machines.c.key == machine.key)).scalar_one())


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="seconds")


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _machine(row: Any) -> Machine:
    return _machine_of(row["cpu"], row["isa"], row["cores"])


@functools.lru_cache(maxsize=256)
def _machine_of(cpu: str, isa: str, cores: int) -> Machine:
    """One Machine per row of the machines table, however many points refer to it (its key is computed once)."""
    return Machine(cpu, tuple(json.loads(isa)), cores)


def _measurement(row: Any) -> Measurement:
    return Measurement(row["case_name"], row["metric"], row["value"], row["low"], row["high"], row["n"],
                       row["verdict"], row["threshold_pct"])


def _record(row: Any, found: Sequence[Measurement]) -> RunRecord:
    return RunRecord(row["kind"], _when(row["recorded_at"]), _machine(row), row["commit"], row["branch"],
                     json.loads(row["versions"]), row["passed"], row["summary"], row["source"],
                     json.loads(row["details"]), tuple(found))


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url
