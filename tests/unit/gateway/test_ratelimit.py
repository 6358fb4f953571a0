"""The login limits' sliding windows, driven by a fake clock."""

from __future__ import annotations

import pytest

from core.errors import RateLimited
from core.ratelimit import LoginThrottle, SlidingWindowLimiter, retry_after_seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_allows_the_limit_within_a_window_then_says_how_long_to_wait() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, 60.0, clock=clock)
    assert [limiter.hit("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    clock.advance(10)
    assert limiter.hit("a") == pytest.approx(50.0)  # the first hit leaves the window at t+60
    assert limiter.hit("b") == 0.0  # keys are independent


def test_the_window_slides_instead_of_resetting() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(2, 60.0, clock=clock)
    limiter.hit("a")
    clock.advance(30)
    limiter.hit("a")
    clock.advance(29)
    assert limiter.hit("a") == pytest.approx(1.0)
    clock.advance(1)  # the first hit is now exactly 60 s old: out of the window
    assert limiter.hit("a") == 0.0
    assert limiter.hit("a") == pytest.approx(30.0)  # the second is still in it


def test_refused_attempts_do_not_extend_the_wait() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(1, 60.0, clock=clock)
    limiter.hit("a")
    for _ in range(100):
        clock.advance(0.5)
        limiter.hit("a")
    clock.advance(10)
    assert limiter.hit("a") == 0.0


def test_refund_takes_back_the_latest_attempt_and_idle_keys_are_forgotten() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(1, 60.0, clock=clock)
    limiter.hit("a")
    limiter.refund("a")
    assert len(limiter) == 0
    assert limiter.hit("a") == 0.0
    limiter.refund("unknown")  # nothing to take back
    clock.advance(61)
    limiter.hit("b")
    assert limiter.hit("a") == 0.0
    assert len(limiter) == 2


def test_memory_is_bounded_by_max_keys() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(5, 60.0, clock=clock, max_keys=100)
    for i in range(1000):
        limiter.hit(f"spray-{i}")
        clock.advance(0.01)
    assert len(limiter) <= 100
    # The newest keys are the ones kept.
    assert limiter.hit("spray-999") == 0.0
    assert len(limiter) <= 100
    # Expired windows are dropped before live ones.
    clock.advance(120)
    limiter.hit("fresh")
    assert len(limiter) == 1


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        SlidingWindowLimiter(0)
    with pytest.raises(ValueError):
        SlidingWindowLimiter(1, 0)


def test_retry_after_is_a_whole_positive_number_of_seconds() -> None:
    assert retry_after_seconds(0.001) == 1
    assert retry_after_seconds(1.0) == 1
    assert retry_after_seconds(1.2) == 2
    assert retry_after_seconds(59.99) == 60


def test_login_throttle_limits_addresses_and_failed_logins_per_account() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(per_address=3, failures_per_account_address=2, failures_per_account=5, clock=clock)
    for _ in range(3):
        throttle.attempt_from("10.0.0.1")
    with pytest.raises(RateLimited) as refused:
        throttle.attempt_from("10.0.0.1")
    assert refused.value.status_code == 429
    assert refused.value.code == "rate_limited"
    assert 0 < refused.value.retry_after <= 60
    throttle.attempt_from("10.0.0.2")

    # Two failures from one address lock the account there (whatever the case of the email) ...
    throttle.attempt_on("Victim@example.com", "10.0.0.1")
    throttle.attempt_on("victim@example.com", "10.0.0.1")
    with pytest.raises(RateLimited) as here:
        throttle.attempt_on("VICTIM@example.com", "10.0.0.1")
    assert "from this address" in here.value.message
    # ... and nowhere else, nor for other accounts.
    throttle.attempt_on("victim@example.com", "10.0.0.2")
    throttle.attempt_on("other@example.com", "10.0.0.1")
    clock.advance(60)
    throttle.attempt_on("victim@example.com", "10.0.0.1")


def test_the_account_ceiling_takes_failures_from_many_addresses() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(per_address=100, failures_per_account_address=2, failures_per_account=5, clock=clock)
    for address in ("10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2", "10.0.0.3"):
        throttle.attempt_on("victim@example.com", address)
    with pytest.raises(RateLimited) as everywhere:
        throttle.attempt_on("victim@example.com", "10.0.0.9")
    assert "from this address" not in everywhere.value.message
    # The refusal at the ceiling is not counted against the address that met it.
    assert len(throttle.account_addresses) == 3
    clock.advance(60)
    throttle.attempt_on("victim@example.com", "10.0.0.9")


def test_successful_logins_are_not_counted_as_failures() -> None:
    throttle = LoginThrottle(per_address=100, failures_per_account_address=2, failures_per_account=5, clock=FakeClock())
    for _ in range(10):
        throttle.attempt_on("user@example.com", "10.0.0.1")
        throttle.release("user@example.com", "10.0.0.1")
    throttle.attempt_on("user@example.com", "10.0.0.1")
    throttle.attempt_on("user@example.com", "10.0.0.1")
    with pytest.raises(RateLimited):
        throttle.attempt_on("user@example.com", "10.0.0.1")
    assert len(throttle.accounts) == 1
