"""What a caller is told: the rate-limit headers and the 429s, in OpenAI's and Anthropic's shapes."""

from __future__ import annotations

import pytest

from billing.limits import Bucket, Budget, Decision, go_duration, rate_headers, refusal, rfc3339
from billing.limits.refusals import blocked

from .conftest import utc
from .test_limits_plan import Key

NOW_MS = 1_795_000_000_000  # 2026-11-18 11:06:40 UTC


def rpm(limit: int, scope: str = "key") -> Bucket:
    return Bucket(f"tokios:rl:{{o3}}:{scope}:rpm", scope, "requests", limit, 1)


def tpm(limit: int, cost: int, scope: str = "key") -> Bucket:
    return Bucket(f"tokios:rl:{{o3}}:{scope}:tpm", scope, "tokens", limit, cost)


@pytest.mark.parametrize(
    "ms, text",
    [
        (0, "0s"),
        (12, "12ms"),
        (999, "999ms"),
        (1000, "1s"),
        (1500, "1.5s"),
        (360_000, "6m0s"),
        (61_234, "1m1.234s"),
        (3_600_000, "1h0m0s"),
    ],
)
def test_durations_are_printed_the_way_go_prints_them(ms, text):
    assert go_duration(ms) == text


def test_headers_report_the_tightest_of_the_key_and_org_limits():
    buckets = [rpm(60), rpm(100, "org"), tpm(10_000, 500)]

    headers = rate_headers(buckets, [59.0, 3.0, 9_500.0], NOW_MS)

    assert headers == {
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-requests": "3",
        "x-ratelimit-reset-requests": "58.2s",
        "x-ratelimit-limit-tokens": "10000",
        "x-ratelimit-remaining-tokens": "9500",
        "x-ratelimit-reset-tokens": "3s",
    }


def test_a_bucket_below_zero_reports_none_remaining_and_a_reset_under_a_second_in_ms():
    headers = rate_headers([tpm(60_000, 0), rpm(600)], [-250.4, 599.5], NOW_MS, into={"x-request-id": "r"})

    assert headers["x-request-id"] == "r"  # added to what was there
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert headers["x-ratelimit-reset-tokens"] == "1m0.251s"
    assert headers["x-ratelimit-reset-requests"] == "50ms"


def test_anthropic_headers_give_the_reset_as_an_rfc3339_instant():
    headers = rate_headers([rpm(60)], [59.0], NOW_MS, anthropic=True)

    assert headers["anthropic-ratelimit-requests-limit"] == "60"
    assert headers["anthropic-ratelimit-requests-remaining"] == "59"
    assert headers["anthropic-ratelimit-requests-reset"] == rfc3339(NOW_MS + 1000) == "2026-11-18T11:06:41Z"
    assert "anthropic-ratelimit-tokens-limit" not in headers


def test_a_key_without_rate_limits_gets_no_headers():
    assert rate_headers([], [], NOW_MS, anthropic=True) == {}


def test_a_refusal_by_a_bucket_says_which_limit_whose_and_when_to_retry():
    decision = Decision("limited", denied=1, retry_ms=1_500, levels=[10.0, 99.6])

    refused = refusal(Key(), tpm(1000, 400, "org"), decision, 1, NOW_MS, anthropic=False)

    assert refused.message == (
        "Rate limit reached for tokens per minute (TPM) on organization acme: limit 1000, remaining 99, "
        "requested 400. Please try again in 1.5s."
    )
    assert (refused.status, refused.code, refused.error_type) == (429, "rate_limit_exceeded", "tokens")
    assert refused.headers == {"retry-after": "2", "retry-after-ms": "1500"}
    assert refusal(Key(), rpm(1), decision, 0, NOW_MS, anthropic=True).error_type == "rate_limit_error"


def test_a_refusal_by_a_budget_says_whose_how_much_and_when_it_resets():
    budget = Budget("tokios:spend:{o3}:k7:2026-11", "key", 3, 7, "2026-11", 5_000_000, 150)
    decision = Decision("over_budget", denied=1, levels=[59.0], used=[4_999_900, 12_000_000])
    org_budget = budget._replace(scope="org", key_id=None)

    refused = refusal(Key(), budget, decision, 1, NOW_MS, anthropic=False)
    for_the_org = refusal(Key(), org_budget, decision, 1, NOW_MS, anthropic=True)

    assert refused.message == (
        "This API key has reached its monthly budget: $4.9999 of $5.00 spent in 2026-11 (UTC), and this "
        "request could cost up to $0.00015. The budget resets on 2026-12-01 00:00 UTC; an admin can raise it."
    )
    assert (refused.code, refused.error_type) == ("insufficient_quota", "insufficient_quota")
    assert refused.headers == {"retry-after": str(int(utc(2026, 12, 1).timestamp()) - NOW_MS // 1000)}
    assert for_the_org.message.startswith("Organization acme has reached its monthly budget")
    assert (for_the_org.code, for_the_org.error_type) == ("insufficient_quota", "rate_limit_error")


def test_a_limit_of_zero_is_refused_as_blocked_for_a_minute():
    refused = blocked(Key(), [rpm(10), rpm(0, "org")], 1, NOW_MS, anthropic=False)

    assert "requests per minute (RPM) on organization acme: limit 0, remaining 0" in refused.message
    assert refused.headers == {"retry-after": "60", "retry-after-ms": "60000"}
