"""The conversion benchmark's rounds (`python -m bench --conversion-rounds N`): which round's
figures are shown, and that the aims are judged on the medians of every round's ratios."""

from __future__ import annotations

from typing import Any

from bench.conversion import median_round
from bench.driver import DriverTiming
from bench.report import judge


def _round(throughput: float, p99: float, *, floor_first: bool = False) -> dict[str, Any]:
    timing = DriverTiming(run_id="r", backup_s=2.0, convert_s=18.0, rows=200_000, batches=100,
                          retries=0, batch_size=2000, lock_timeout_ms=2000, backup_rows=200_000)
    return {"driver_timing": timing, "floor": {"seconds": 16.0, "rows": 200_000, "rows_per_s": 12_500},
            "floor_first": floor_first, "throughput_ratio": throughput,
            "load": {"p99_ratio": p99, "baseline": {"p99_ms": 20.0},
                     "during_conversion": {"p99_ms": 20.0 * p99}}}


def test_one_round_is_shown_as_it_is() -> None:
    only = _round(0.7, 2.5)
    assert median_round([only]) is only and "rounds" not in only and "medians" not in only


def test_three_rounds_show_the_median_throughput_round_and_judge_on_both_medians() -> None:
    rounds = [_round(0.9, 2.0), _round(0.6, 3.0, floor_first=True), _round(0.8, 1.2)]
    chosen = median_round(rounds)
    assert chosen is rounds[2] and chosen["round_shown"] == 3
    # the p99 median is round 1's: each ratio's median is taken over every round on its own
    assert chosen["medians"] == {"throughput_ratio": 0.8, "p99_ratio": 2.0}
    assert [(r["round"], r["floor_first"], r["throughput_ratio"], r["p99_ratio"])
            for r in chosen["rounds"]] == [(1, False, 0.9, 2.0), (2, True, 0.6, 3.0), (3, False, 0.8, 1.2)]


def test_an_even_count_shows_the_lower_middle_round_and_averages_the_p99_middle() -> None:
    rounds = [_round(0.9, 1.0), _round(0.5, 4.0), _round(0.7, 3.0), _round(0.8, 1.5)]
    chosen = median_round(rounds)
    assert chosen is rounds[2]
    assert chosen["medians"] == {"throughput_ratio": 0.7, "p99_ratio": 2.25}


def test_a_round_without_a_p99_ratio_is_left_out_of_its_median() -> None:
    unmeasured = _round(0.7, 1.0)
    unmeasured["load"]["p99_ratio"] = None
    assert median_round([unmeasured, _round(0.8, 3.0), _round(0.9, 1.0)])["medians"]["p99_ratio"] == 2.0
    assert median_round([unmeasured, dict(unmeasured)])["medians"]["p99_ratio"] is None


def _conversion(p99_ratio: float, medians: dict[str, float] | None) -> dict[str, Any]:
    timing = {"rows": 200_000, "rows_per_s": 10_000, "backup_s": 2.0, "convert_s": 18.0,
              "total_s": 20.0, "batches": 100, "batch_size": 2000}
    summary = {"errors": 0, "requests": 800, "p99_ms": 20.0 * p99_ratio}
    conversion: dict[str, Any] = {
        "driver": timing, "floor": {"seconds": 16.0, "rows": 200_000, "rows_per_s": 12_500},
        "throughput_ratio": 0.8,
        "load": {"baseline": {**summary, "p99_ms": 20.0}, "during_conversion": summary,
                 "p99_ratio": p99_ratio, "max_excess_over_baseline_p50_ms": 10.0},
        "locks": {"sample_interval_ms": 20, "api_during_conversion": {
            "longest_ms": 0.0, "waits_seen": 0, "over_1s": 0}}}
    if medians:
        conversion.update(medians=medians, rounds=[{}, {}, {}])
    return conversion


def test_the_p99_aim_is_judged_on_the_median_not_on_the_round_shown() -> None:
    def p99_aim(conversion: dict[str, Any]) -> Any:
        return next(a for a in judge(conversion) if a.name == "p99 under twice the baseline")

    assert p99_aim(_conversion(2.5, None)).met is False
    judged = p99_aim(_conversion(2.5, {"throughput_ratio": 0.8, "p99_ratio": 1.9}))
    assert judged.met is True and "1.9x; median of 3 rounds" in judged.measured
    assert p99_aim(_conversion(1.5, {"throughput_ratio": 0.8, "p99_ratio": 2.1})).met is False
