"""CPU tweaks: governor, energy/performance preference and bias, turbo, CPU offline."""

import os
import re
from typing import Any, List

from ..options import Boolean, Choice, Integer, ListOf, Option, OptionType, String
from .base import FileChange, Tweak, common_options

CPU_DIR = "/sys/devices/system/cpu"
EPP_CHOICES = ("default", "performance", "balance_performance", "balance_power", "power")
EPB_NAMES = {"performance": 0, "balance-performance": 4, "normal": 6, "balance-power": 8, "power": 15}


def cpu_numbers(tweak: Tweak) -> List[int]:
    return sorted(int(name[3:]) for name in tweak.root.listdir(CPU_DIR) if re.match(r"^cpu\d+$", name))


class CpuGovernor(Tweak):
    """Switch each cpufreq policy to the first available governor of a preference list."""

    TYPE = "cpu_governor"
    ORDER = 10
    OPTIONS = common_options() + (
        Option(
            "governor",
            ListOf(String(nonempty=True), nonempty=True),
            default=("powersave",),
            doc="Governors in order of preference; the first one the CPU offers is used "
            "(powersave on intel_pstate/amd-pstate, e.g. 'powersave, schedutil, conservative').",
        ),
    )

    def plan(self) -> List[Any]:
        changes, seen = [], set()
        for path in self.root.glob(CPU_DIR + "/cpu[0-9]*/cpufreq/scaling_governor"):
            policy = self.realpath(os.path.dirname(path))
            if policy in seen:  # cpuN/cpufreq links to a shared policy directory
                continue
            seen.add(policy)
            available = (self.root.read(os.path.dirname(path) + "/scaling_available_governors", "") or "").split()
            choice = next((gov for gov in self.options["governor"] if gov in available), None)
            if choice is None:
                self.note("%s offers none of %s" % (os.path.dirname(path), ", ".join(self.options["governor"])))
                continue
            changes.append(FileChange(path, choice))
        if not seen:
            self.note("no cpufreq policies")
        return changes


class EnergyPerformancePreference(Tweak):
    """Set energy_performance_preference on each cpufreq policy, if the driver offers the value."""

    TYPE = "energy_performance_preference"
    ORDER = 20
    OPTIONS = common_options() + (
        Option(
            "preference",
            ListOf(Choice(*EPP_CHOICES), nonempty=True),
            default=("power",),
            doc="Preferences in order; the first listed in energy_performance_available_preferences is used.",
        ),
    )

    def plan(self) -> List[Any]:
        changes = []
        paths = list(self.root.glob(CPU_DIR + "/cpufreq/policy[0-9]*/energy_performance_preference"))
        for path in paths:
            available = (
                self.root.read(os.path.dirname(path) + "/energy_performance_available_preferences", "") or ""
            ).split()
            choice = next((pref for pref in self.options["preference"] if pref in available), None)
            if choice is None:
                self.note("%s offers none of %s" % (os.path.dirname(path), ", ".join(self.options["preference"])))
                continue
            changes.append(FileChange(path, choice))
        if not paths:
            self.note("no energy_performance_preference (driver without EPP)")
        return changes


class EnergyBias(OptionType):
    """0 (performance) … 15 (power), or one of the kernel's names."""

    schema_type = "str"

    def parse(self, text: str) -> int:
        word = text.strip().lower()
        if word in EPB_NAMES:
            return EPB_NAMES[word]
        if word.isdigit() and 0 <= int(word) <= 15:
            return int(word)
        raise ValueError("%r is not 0-15 or one of %s" % (text, ", ".join(EPB_NAMES)))

    def describe(self) -> str:
        return "0-15 or one of " + ", ".join(EPB_NAMES)


class EnergyPerfBias(Tweak):
    """Set each CPU's energy_perf_bias (Intel EPB)."""

    TYPE = "energy_perf_bias"
    ORDER = 20
    OPTIONS = common_options() + (
        Option(
            "bias",
            EnergyBias(),
            default=15,
            doc="0 = performance … 15 = power; names performance, balance-performance, normal, "
            "balance-power, power are accepted.",
        ),
    )

    def plan(self) -> List[Any]:
        paths = list(self.root.glob(CPU_DIR + "/cpu[0-9]*/power/energy_perf_bias"))
        if not paths:
            self.note("no energy_perf_bias (not an Intel CPU with EPB)")
        return [FileChange(path, str(self.options["bias"])) for path in paths]


class CpuBoost(Tweak):
    """Turn turbo/boost off (intel_pstate no_turbo, cpufreq boost, or per-policy boost)."""

    TYPE = "cpu_boost"
    ORDER = 30
    OPTIONS = common_options() + (
        Option("boost", Boolean(), default=False, doc="Whether turbo/boost stays on during powersave."),
    )

    def plan(self) -> List[Any]:
        on = self.options["boost"]
        if self.root.exists(CPU_DIR + "/intel_pstate/no_turbo"):
            # Inverted sense: no_turbo = 1 means boost off.
            return [FileChange(CPU_DIR + "/intel_pstate/no_turbo", "0" if on else "1")]
        if self.root.exists(CPU_DIR + "/cpufreq/boost"):
            return [FileChange(CPU_DIR + "/cpufreq/boost", "1" if on else "0")]
        paths = list(self.root.glob(CPU_DIR + "/cpufreq/policy[0-9]*/boost"))
        if not paths:
            self.note("no boost control")
        return [FileChange(path, "1" if on else "0") for path in paths]


class CpuOffline(Tweak):
    """Take CPUs offline (highest first), keeping a number online; never cpu0."""

    TYPE = "cpu_offline"
    ORDER = 90
    OPTIONS = common_options() + (
        Option("keep_online", Integer(minimum=1), default=1, doc="How many CPUs stay online (cpu0 always does)."),
    )

    def plan(self) -> List[Any]:
        online, candidates = 0, []
        for number in cpu_numbers(self):
            state = self.root.read("%s/cpu%d/online" % (CPU_DIR, number))
            if state is None or state.strip() == "1":
                online += 1  # no 'online' file (typically cpu0) means it cannot go offline: it is online
                if state is not None and number != 0:
                    candidates.append(number)
        excess = max(0, online - max(1, self.options["keep_online"]))
        chosen = sorted(candidates, reverse=True)[:excess]
        if excess > len(chosen):
            self.note("only %d CPU(s) can be taken offline" % len(chosen))
        return [FileChange("%s/cpu%d/online" % (CPU_DIR, number), "0") for number in chosen]
