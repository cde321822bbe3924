"""The nap state machine, driven by a FakeClock: grace, cancel, every stage, resume, fallbacks."""

import pytest

from powernap.clock import FakeClock
from powernap.config import Stage
from powernap.state import AWAKE, GRACE, NAPPING, Decision, NapMachine

STAGES = [
    Stage(1, 600.0, "powersave", 0.0),
    Stage(2, 7200.0, "suspend", 60.0),
    Stage(3, 86400.0, "poweroff", 300.0),
]


def kinds(decisions):
    return [(d.kind, d.stage.index, d.action) for d in decisions]


def machine(settle=0.0, **kwargs):
    clock = FakeClock()
    return clock, NapMachine(STAGES, clock, settle=settle, **kwargs)


def run_until(clock, nap, seconds, step=1.0, next_wake=None):
    """Advance in steps, collecting every decision (bounded by the duration)."""
    out = []
    for _unused in range(int(seconds / step)):
        clock.advance(step)
        out.extend(nap.tick(next_wake))
    return out


def test_idle_walks_every_stage_in_order_with_grace_before_disruptive_ones():
    clock, nap = machine()
    assert nap.state == AWAKE
    assert run_until(clock, nap, 599) == []
    assert kinds(run_until(clock, nap, 1)) == [("apply", 1, "powersave")]
    assert nap.state == NAPPING and nap.powersave_active
    # Grace for stage 2 starts warn (60 s) before its 'after'.
    out = run_until(clock, nap, 7200 - 60 - 600)
    assert kinds(out) == [("warn", 2, "suspend")]
    assert out[0].in_seconds == pytest.approx(60.0)
    assert nap.state == GRACE
    out = run_until(clock, nap, 60)
    # Powersave is restored before the suspend runs (PowerNap's stage-2 bug).
    assert kinds(out) == [("restore", 1, "powersave"), ("act", 2, "suspend")]
    assert nap.state == NAPPING and not nap.powersave_active
    assert nap.tick() == []  # nothing more while the action runs
    assert nap.action_finished(True, "ok") == []
    # The suspend "did not take" (no resume): escalation continues to poweroff on time.
    out = run_until(clock, nap, 86400 - 7200)
    assert kinds(out) == [("warn", 3, "poweroff"), ("act", 3, "poweroff")]


def test_activity_during_grace_cancels_and_undoes_powersave():
    clock, nap = machine()
    run_until(clock, nap, 7200 - 60)
    assert nap.state == GRACE and nap.powersave_active
    out = nap.activity("tcp: ssh from 10.0.0.5")
    assert kinds(out) == [("cancel", 2, "suspend"), ("restore", 1, "powersave")]
    assert nap.state == AWAKE
    snap = nap.snapshot()
    assert snap["idle_seconds"] == 0 and snap["stage"] is None
    assert snap["last_activity_reason"] == "tcp: ssh from 10.0.0.5"
    # The idle count starts over: powersave again only after a full 600 s.
    assert run_until(clock, nap, 599) == []
    assert kinds(run_until(clock, nap, 1)) == [("apply", 1, "powersave")]


def test_activity_in_powersave_restores_at_once():
    clock, nap = machine()
    run_until(clock, nap, 600)
    assert kinds(nap.activity("input: key")) == [("restore", 1, "powersave")]
    assert nap.state == AWAKE and not nap.powersave_active


def test_settle_after_start_and_wake_delays_everything():
    clock, nap = machine(settle=900.0)
    assert run_until(clock, nap, 899) == []
    assert nap.snapshot()["settle_remaining"] == pytest.approx(1.0)
    assert kinds(run_until(clock, nap, 1)) == [("apply", 1, "powersave")]
    assert kinds(nap.wake()) == [("restore", 1, "powersave")]
    assert run_until(clock, nap, 899) == []
    assert kinds(run_until(clock, nap, 1)) == [("apply", 1, "powersave")]


def test_unscheduled_resume_starts_idle_over_with_settle():
    clock, nap = machine(settle=120.0)
    run_until(clock, nap, 7200 + 120)
    assert nap.snapshot()["running"] == {"stage": 2, "action": "suspend"}
    nap.action_finished(True)
    clock.sleep_through(5 * 3600)
    assert nap.resumed(scheduled=False, slept=5 * 3600) == []
    snap = nap.snapshot()
    assert snap["state"] == AWAKE and snap["idle_seconds"] == 0 and snap["settle_remaining"] == 120
    assert run_until(clock, nap, 599) == []
    assert kinds(run_until(clock, nap, 1)) == [("apply", 1, "powersave")]


def test_scheduled_resume_goes_back_to_sleep_after_settle_and_escalates():
    clock, nap = machine(settle=120.0)
    run_until(clock, nap, 7200 + 120)
    nap.action_finished(True)
    clock.sleep_through(10 * 3600)  # our RTC alarm woke the host for a timer
    nap.resumed(scheduled=True, slept=10 * 3600)
    assert run_until(clock, nap, 119) == []
    # Idle is kept: the highest due stage (suspend) warns again, then fires.
    out = run_until(clock, nap, 61)
    assert kinds(out) == [("warn", 2, "suspend"), ("act", 2, "suspend")]
    nap.action_finished(True)
    clock.sleep_through(86400)
    nap.resumed(scheduled=True, slept=86400)
    assert kinds(run_until(clock, nap, 120 + 300)) == [("warn", 3, "poweroff"), ("act", 3, "poweroff")]


def test_failed_action_leaves_host_awake_and_powersave_comes_back():
    clock, nap = machine()
    run_until(clock, nap, 7200)
    assert nap.state == NAPPING and nap.snapshot()["running"]["action"] == "suspend"
    assert nap.action_finished(False, "exit status 1") == []
    snap = nap.snapshot()
    assert {"stage": 2, "action": "suspend", "reason": "failed: exit status 1"} in snap["skipped"]
    assert snap["next_action"] == {"stage": 1, "action": "powersave", "in_seconds": 0}
    assert kinds(nap.tick()) == [("apply", 1, "powersave")]
    assert nap.snapshot()["next_action"] == {"stage": 3, "action": "poweroff", "in_seconds": 86400 - 7200}


def test_activity_while_action_runs_ends_awake():
    clock, nap = machine()
    run_until(clock, nap, 7200)
    assert nap.activity("process: backup") == []
    clock.advance(1)
    assert nap.action_finished(True) == []
    assert nap.state == AWAKE


def test_denied_stage_falls_back_to_next_allowed_stage_and_says_so():
    clock, nap = machine(denied={"suspend": "virtual machine (kvm)"})
    run_until(clock, nap, 600)
    snap = nap.snapshot()
    assert {"stage": 2, "action": "suspend", "reason": "suspend denied: virtual machine (kvm)"} in snap["skipped"]
    assert snap["next_action"] == {"stage": 3, "action": "poweroff", "in_seconds": 86400 - 600}
    out = run_until(clock, nap, 86400 - 600)
    assert kinds(out) == [("warn", 3, "poweroff"), ("restore", 1, "powersave"), ("act", 3, "poweroff")]


def test_min_sleep_holds_sleep_until_the_scheduled_wake_is_past():
    clock, nap = machine(min_sleep=1200.0)
    wake_at = clock.wall() + 7200 + 600  # 10 min after suspend would be due: too close
    out = run_until(clock, nap, 7200 + 60, next_wake=wake_at)
    assert kinds(out) == [("apply", 1, "powersave")]
    assert any(s["reason"].startswith("held: next scheduled wake in") for s in nap.snapshot(wake_at)["skipped"])
    # The timer has run and no later wake is known: the suspend may go ahead.
    out = run_until(clock, nap, 61, next_wake=None)
    assert kinds(out) == [("warn", 2, "suspend"), ("restore", 1, "powersave"), ("act", 2, "suspend")]


def test_grace_called_off_when_a_wake_becomes_too_close():
    clock, nap = machine(min_sleep=1200.0)
    run_until(clock, nap, 7200 - 30)
    assert nap.state == GRACE
    assert kinds(nap.tick(next_wake=clock.wall() + 300)) == [("cancel", 2, "suspend")]
    assert nap.state == NAPPING  # still in powersave


def test_nap_now_runs_next_stage_or_named_action_without_grace():
    clock, nap = machine(settle=600.0, denied={"hibernate": "deny list: buggy firmware"})
    assert kinds(nap.nap_now()) == [("apply", 1, "powersave")]
    assert kinds(nap.nap_now()) == [("restore", 1, "powersave"), ("act", 2, "suspend")]
    with pytest.raises(ValueError, match="still running"):
        nap.nap_now()
    nap.action_finished(True)
    nap.resumed(scheduled=False)
    with pytest.raises(ValueError, match="buggy firmware"):
        nap.nap_now("hibernate")
    out = nap.nap_now("hybrid-sleep")
    assert kinds(out) == [("act", 0, "hybrid-sleep")]
    assert nap.snapshot()["stage"]["index"] == 0


def test_snapshot_next_action_and_deadline_follow_the_clock():
    clock, nap = machine(settle=30.0)
    snap = nap.snapshot()
    assert snap["state"] == AWAKE
    assert snap["next_action"] == {"stage": 1, "action": "powersave", "in_seconds": 600}
    assert nap.deadline() == pytest.approx(clock.boottime() + 600)
    clock.advance(100)
    assert nap.snapshot()["next_action"]["in_seconds"] == 500


def test_decision_equality_is_by_kind_and_stage():
    assert Decision("act", STAGES[1]) == Decision("act", Stage(2, 1.0, "suspend", 0.0))
    assert Decision("act", STAGES[1]) != Decision("warn", STAGES[1])
