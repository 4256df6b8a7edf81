"""The history: every gate, bench and how-fast run (and imported pytest-benchmark files) kept in a database, with
the trends, steps and baselines read from it. Above the gate (it records gate results), below the report (which
draws it)."""
