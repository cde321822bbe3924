"""Powersave tweaks: reversible power knobs, applied and restored as a ``PowersaveSet``.

Importing this package registers every tweak type (``registry("tweak")``).
"""

from . import cpu, devices, kernel, net, storage, system, usb  # noqa: F401  (registers the tweak types)
from .base import (
    CommandChange,
    CommandResult,
    CommandRunner,
    FileChange,
    Tweak,
    TweakContext,
    common_options,
    platform_denies,
)
from .powersave import DEFAULT_RECORD_PATH, PowersaveSet, check_wol_guard, default_record_path, recover_leftovers

__all__ = [
    "recover_leftovers",
    "DEFAULT_RECORD_PATH",
    "CommandChange",
    "CommandResult",
    "CommandRunner",
    "FileChange",
    "PowersaveSet",
    "Tweak",
    "TweakContext",
    "check_wol_guard",
    "common_options",
    "default_record_path",
    "platform_denies",
]
