"""What an analysis step checks: the criteria a playbook gives, validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AnalysisCriteria(BaseModel):
    """How a canary is judged against its baseline (the stable version) over one window.

    The judge compares the two versions over the same window: a proportion
    test for failure rates and Mann-Whitney U for reply latencies (as Kayenta
    does). Below ``min_sample`` on either side the verdict is inconclusive.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    window: float = Field(default=60.0, gt=0)
    """Seconds of traffic to judge (playbooks write durations like ``60s`` or ``5m``)."""
    min_sample: int = Field(default=50, ge=1)
    """Fewest outcomes per version (and latencies, for the latency test) needed to judge."""
    max_failure_rate: float = Field(default=0.05, ge=0, le=1)
    """The canary fails if its failure rate is above this, whatever the baseline."""
    max_failure_rate_increase: float = Field(default=0.01, ge=0, le=1)
    """The canary fails if its failure rate is significantly above the baseline's plus this."""
    max_latency_ratio: float = Field(default=1.5, ge=1)
    """The canary fails if its median latency is significantly above the baseline's times this."""
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    """Significance level of both tests (one-sided)."""
