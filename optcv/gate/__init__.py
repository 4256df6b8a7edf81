"""The A/B gate: base and head timed side by side in one job, case by case, and judged.

config (what is timed), revisions and sides (what is compared), workers and worker (the processes that
time), timing (rounds, re-tests), verdict (the statistics and typed results), run (the one entry point),
selftest and inject (the gate proving itself), ratio (the older ratio gate, the fallback without a base).
"""
