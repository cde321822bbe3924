# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
import random
import threading
import time

import pytest

from ansible_collections.powernap.fleet.plugins.module_utils.power import (
    PowerAuthError,
    PowerConnectionError,
    backoff_delays,
    call_with_deadline,
    retry_with_deadline,
)


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_call_with_deadline_returns_value_and_reraises():
    assert call_with_deadline(lambda a, b: a + b, 5, "add", (2, 3)) == 5
    with pytest.raises(ZeroDivisionError):
        call_with_deadline(lambda: 1 / 0, 5)


def test_call_with_deadline_abandons_a_hung_call():
    release = threading.Event()
    start = time.monotonic()
    with pytest.raises(PowerConnectionError) as info:
        call_with_deadline(release.wait, 0.2, "hang", (30,))
    assert time.monotonic() - start < 2
    assert "did not finish within 0.2 s" in str(info.value)
    release.set()


def test_backoff_is_capped_and_jittered():
    delays = backoff_delays(first=1, factor=2, cap=12, jitter=0.2, rng=random.Random(1))
    values = [next(delays) for _attempt in range(8)]
    assert 0.8 <= values[0] <= 1.2
    assert all(v <= 12 * 1.2 for v in values)
    assert values[-1] >= 12 * 0.8


def test_retry_retries_connection_errors_until_success():
    fake = FakeTime()
    calls = []

    def flaky(remaining):
        calls.append(remaining)
        if len(calls) < 3:
            raise PowerConnectionError("no answer")
        return "ok"

    assert retry_with_deadline(flaky, 60, delays=iter([4, 8, 16]), clock=fake.clock, sleep=fake.sleep) == "ok"
    assert fake.sleeps == [4, 8]
    assert calls == [60, 56, 48]


def test_retry_stops_at_the_deadline_with_the_elapsed_time():
    fake = FakeTime()

    def never(_remaining):
        raise PowerConnectionError("no answer", "bmc1")

    with pytest.raises(PowerConnectionError) as info:
        retry_with_deadline(never, 10, delays=iter([4, 4, 4, 4]), clock=fake.clock, sleep=fake.sleep, what="query")
    assert "query failed after 3 attempt(s) in 8.0 s" in str(info.value)
    assert str(info.value).startswith("bmc1: ")


def test_retry_does_not_retry_auth_errors():
    calls = []

    def denied(_remaining):
        calls.append(1)
        raise PowerAuthError("bad password")

    with pytest.raises(PowerAuthError):
        retry_with_deadline(denied, 60, delays=iter([1, 1]), sleep=lambda s: None)
    assert len(calls) == 1
