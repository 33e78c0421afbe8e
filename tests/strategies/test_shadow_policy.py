"""The shadow strategy's judgement of mirrored replies: real differences against noise."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from strategies import ShadowPolicy, shadow_report


def raw(fields: dict[str, tuple[int, int, int, int]], **extra: Any) -> dict[str, Any]:
    """One communicator's raw report: per field (compared, shadow, noise compared, noise)."""
    return {
        "counts": extra.get("counts", {}),
        "outcomes": extra.get("outcomes", {}),
        "inflight": extra.get("inflight", 0),
        "comparison": {
            "compared": max((c for c, _, _, _ in fields.values()), default=0),
            "incomplete": extra.get("incomplete", 0),
            "fields": {
                name: {"compared": c, "shadow_diffs": s, "noise_compared": nc, "noise_diffs": n}
                for name, (c, s, nc, n) in fields.items()
            },
            "examples": extra.get("examples", []),
        },
    }


def test_a_field_that_only_the_shadow_changes_is_real() -> None:
    report = shadow_report([raw({"parameters.tag": (12, 12, 12, 0), "command": (12, 0, 12, 0)})])
    assert set(report["differences"]) == {"parameters.tag"}
    assert report["differences"]["parameters.tag"] == {
        "compared": 12,
        "shadow_rate": 1.0,
        "noise_rate": 0.0,
    }


def test_a_field_that_two_primaries_also_disagree_on_is_noise() -> None:
    report = shadow_report([raw({"parameters.at": (12, 12, 12, 12)})])
    assert report["differences"] == {}
    assert "parameters.at" in report["noise"]


def test_too_few_comparisons_prove_nothing() -> None:
    assert shadow_report([raw({"parameters.tag": (2, 2, 2, 0)})])["differences"] == {}
    assert shadow_report([raw({"parameters.tag": (3, 3, 3, 0)})])["differences"] != {}


def test_the_margin_is_the_policys() -> None:
    """A shadow rate 20 points over the noise is real by default, not with a 25-point margin."""
    reports = [raw({"parameters.x": (10, 3, 10, 1)})]
    assert set(shadow_report(reports)["differences"]) == {"parameters.x"}
    strict = ShadowPolicy(real_margin=0.25)
    assert shadow_report(reports, strict)["differences"] == {}


def test_examples_shown_are_of_real_differences_only() -> None:
    examples = [{"fields": ["parameters.tag"]}, {"fields": ["parameters.at"]}]
    report = shadow_report(
        [raw({"parameters.tag": (5, 5, 5, 0), "parameters.at": (5, 5, 5, 5)}, examples=examples)]
    )
    assert report["examples"] == [{"fields": ["parameters.tag"]}]


def test_drop_rates_are_shares_of_the_candidates() -> None:
    counts = {"candidates": 200, "sent": 150, "dropped_busy": 40, "dropped_bound": 10}
    report = shadow_report([raw({}, counts=counts)])
    assert report["drop_rates"] == {"dropped_busy": 0.2, "dropped_bound": 0.05, "failed": 0.0}


def test_nothing_mirrored_yet_reads_as_zeros() -> None:
    report = shadow_report([])
    assert report["counts"]["candidates"] == 0
    assert report["drop_rates"]["dropped_busy"] == 0.0
    assert (report["differences"], report["noise"], report["examples"]) == ({}, {}, [])


field_counts = st.tuples(*[st.integers(0, 50)] * 4).map(
    lambda t: (t[0] + t[1], t[1], t[2] + t[3], t[3])  # diffs never exceed comparisons
)
communicator_report = st.dictionaries(
    st.sampled_from(["command", "parameters.a", "parameters.b"]), field_counts, max_size=3
)


@given(st.lists(communicator_report, min_size=1, max_size=4))
def test_many_communicators_judge_as_one_that_saw_everything(
    parts: list[dict[str, tuple[int, int, int, int]]],
) -> None:
    """The judgement of several reports is that of their sum: no communicator weighs more."""
    total: dict[str, tuple[int, int, int, int]] = {}
    for part in parts:
        for name, counts in part.items():
            before = total.get(name, (0, 0, 0, 0))
            total[name] = tuple(a + b for a, b in zip(before, counts, strict=True))  # type: ignore[assignment]
    split = shadow_report([raw(p) for p in parts])
    whole = shadow_report([raw(total)])
    assert split["differences"] == whole["differences"]
    assert split["noise"] == whole["noise"]
