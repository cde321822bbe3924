# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
import time

import pytest

from ansible_collections.powernap.fleet.plugins.module_utils.engine import set_rtc_alarm, verdict_denies
from ansible_collections.powernap.fleet.plugins.modules import nap


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("10m", 600), ("1h30m", 5400), ("2d", 172800)])
def test_durations(text, seconds):
    assert nap.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1x", "-5"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        nap.parse_duration(text)


def test_wake_epoch():
    now = 1_800_000_000
    assert nap.wake_epoch(None, "1h", now) == now + 3600
    assert nap.wake_epoch(str(now + 60), None, now) == now + 60
    local = time.strftime("%Y-%m-%d %H:%M", time.localtime(now + 7200))
    assert abs(nap.wake_epoch(local, None, now) - (now + 7200)) < 60
    with pytest.raises(ValueError):
        nap.wake_epoch(str(now - 1), None, now)
    assert nap.wake_epoch(None, None, now) is None


def test_verdict_denies():
    verdict = {"allowed_actions": ["powersave", "suspend"], "denied": {"hibernate": "no swap"}}
    assert verdict_denies(verdict, "suspend") is None
    assert verdict_denies(verdict, "hibernate") == "no swap"
    assert "not among the actions" in verdict_denies(verdict, "poweroff")
    assert verdict_denies(verdict, "powersave") is None
    assert verdict_denies(None, "suspend") is None


def test_rtc_alarm_is_cleared_then_set(tmp_path):
    rtc = tmp_path / "sys/class/rtc/rtc0"
    rtc.mkdir(parents=True)
    writes = []
    alarm = rtc / "wakealarm"
    alarm.write_text("")
    original_open = open

    def recording_open(path, mode="r", *args, **kwargs):
        handle = original_open(path, mode, *args, **kwargs)
        if "w" in mode:
            real_write = handle.write

            def write(data):
                writes.append(data)
                return real_write(data)

            handle.write = write
        return handle

    import builtins

    builtins_open = builtins.open
    builtins.open = recording_open
    try:
        set_rtc_alarm(1_800_000_123, root=str(tmp_path))
    finally:
        builtins.open = builtins_open
    assert writes == ["0\n", "1800000123\n"]
    assert alarm.read_text() == "1800000123\n"
