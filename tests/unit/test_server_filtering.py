"""The list endpoints' filter and orderBy (openrft.server.filtering): AIP-160 expressions over job objects."""

from __future__ import annotations

import pytest

from openrft.server.errors import ApiError
from openrft.server.filtering import ordered, select

FIELDS = {"name", "state", "displayName", "lossConfig", "chunkSize", "createTime", "evaluationDataset", "tags"}  # fmt: skip
JOBS = [
    {"name": "a", "state": "JOB_STATE_RUNNING", "lossConfig": {"method": "DAPO"}, "chunkSize": 200,
     "createTime": "2026-12-01T10:00:00.000Z", "displayName": "nightly-1", "tags": ["x", "y"]},
    {"name": "b", "state": "JOB_STATE_PENDING", "lossConfig": {"method": "GRPO"}, "chunkSize": 8,
     "createTime": "2026-12-02T10:00:00.000Z", "evaluationDataset": "held-out"},
    {"name": "c", "state": "JOB_STATE_FAILED", "lossConfig": {"method": "GSPO_TOKEN", "klBeta": 0.0},
     "chunkSize": 1000, "createTime": "2026-11-30T10:00:00.000Z", "displayName": "other"},
]  # fmt: skip


def names(text: str) -> list[str]:
    return [job["name"] for job in select(JOBS, text, FIELDS)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ["a", "b", "c"]),
        ("state=JOB_STATE_RUNNING", ["a"]),
        ('state = "JOB_STATE_PENDING" OR state = "JOB_STATE_RUNNING"', ["a", "b"]),
        ("state!=JOB_STATE_FAILED", ["a", "b"]),
        ("NOT state=JOB_STATE_FAILED", ["a", "b"]),
        ("-state=JOB_STATE_FAILED", ["a", "b"]),
        ('lossConfig.method="DAPO" AND chunkSize>100', ["a"]),
        ("loss_config.method=GRPO", ["b"]),  # snake_case field names
        ("chunkSize >= 200", ["a", "c"]),  # numbers compare as numbers, not text ("8" > "200")
        ("chunkSize < 200", ["b"]),
        ('createTime > "2026-12-01T00:00:00Z"', ["a", "b"]),
        ('displayName = "nightly*"', ["a"]),  # a wildcard
        ("displayName=other", ["c"]),  # an optional field some jobs lack
        ("displayName!=other", ["a", "b"]),
        ("evaluationDataset:*", ["b"]),
        ("tags:y", ["a"]),  # a list has the value
        ("lossConfig:klBeta", ["c"]),  # an object has the key
        # OR binds tighter than AND; side-by-side terms are ANDed; parentheses group
        ("chunkSize>100 AND state=JOB_STATE_RUNNING OR state=JOB_STATE_FAILED", ["a", "c"]),
        ("chunkSize>100 state=JOB_STATE_RUNNING", ["a"]),
        ("(state=JOB_STATE_PENDING OR state=JOB_STATE_FAILED) AND NOT chunkSize=8", ["c"]),
        ("state=JOB_STATE_running", []),
    ],
)
def test_filter_expressions(text, expected):
    assert names(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stat=JOB_STATE_RUNNING", "unknown field 'stat'"),
        ("state", "must be followed by a comparison"),
        ("state=", "unexpected end"),
        ("(state=X", "not closed"),
        ("state=X)", "unexpected ')'"),
        ("state=X OR", "unexpected end"),
    ],
)
def test_bad_filters_are_refused_naming_the_problem(text, message):
    with pytest.raises(ApiError) as info:
        select(JOBS, text, FIELDS)
    assert info.value.status_code == 400 and message in info.value.message


def test_order_by_fields_directions_and_snake_case():
    assert [j["name"] for j in ordered(JOBS, "createTime desc", FIELDS)] == ["b", "a", "c"]
    assert [j["name"] for j in ordered(JOBS, "create_time", FIELDS)] == ["c", "a", "b"]
    assert [j["name"] for j in ordered(JOBS, "chunkSize", FIELDS)] == ["b", "a", "c"]  # numerically
    assert [j["name"] for j in ordered(JOBS, "displayName desc, name", FIELDS)] == ["c", "a", "b"]
    with pytest.raises(ApiError, match="cannot order by 'size'"):
        ordered(JOBS, "size", FIELDS)
