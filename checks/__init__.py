"""The validation suite: what is verified about the target after a rollback, a deploy or on a schedule.

Each `test_*.py` module holds the checks of one subject; the public fixtures they use (`api`,
`db`, `thresholds`, `run_context`, ...) are in the repository's root `conftest.py`, and the
machinery behind them (options, verdicts, reports) in the private package `checks._plugin`.
"""
