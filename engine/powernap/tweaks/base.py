"""The tweak interface: one small class per reversible powersave knob.

A tweak never writes anything itself.  ``plan()`` looks at the system (reads
``ctx.root``, runs read-only queries through ``ctx.runner``) and returns the
changes it wants: ``FileChange`` (write a sysfs/procfs file) or
``CommandChange`` (run a command, with the command that undoes it).  The
``PowersaveSet`` then records each change's prior value under ``/run/powernap``
*before* making it, makes it, and undoes it exactly on restore.  Keeping the
writes in one place is what makes crash recovery, dry runs, per-tweak
all-or-nothing and the Wake-on-LAN guard hold for every tweak at once.

Platform scope: ``HARDWARE = True`` marks tweaks that touch devices (skipped on
virtual machines and containers unless ``platform = physical``);
``KERNEL_GLOBAL = True`` marks tweaks that change kernel-wide state shared with
the host (skipped in containers).
"""

import logging
import os
import shutil
import subprocess
from typing import Any, Dict, List, Optional, Sequence

from ..options import Boolean, Choice, Declared, Option
from ..sysroot import SysRoot


def common_options(enabled: bool = True) -> tuple:
    """The options every tweak has; ``enabled`` is the default of the ``enabled`` option."""
    return (
        Option(
            "enabled",
            Boolean(),
            default=enabled,
            doc="Set to no to keep the section but leave this tweak out of powersave.",
        ),
        Option(
            "when",
            Choice("always", "ac", "battery"),
            default="always",
            doc="Apply only on this power source; laptops switch tweak sets when the supply changes.",
        ),
    )


class CommandResult:
    __slots__ = ("argv", "returncode", "stdout", "stderr")

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str = "", stderr: str = ""):
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def error_text(self) -> str:
        text = (self.stderr or self.stdout).strip().splitlines()
        return "%s exited %d%s" % (
            self.argv[0] if self.argv else "?",
            self.returncode,
            (": " + text[-1]) if text else "",
        )


class CommandRunner:
    """The one way tweaks and platform detection run commands.

    No shell, C locale (output is parsed), a timeout on every call.  Against a
    fake root the host's real commands must never run, so ``for_root`` gives a
    disabled runner there (every command "not found"); tests inject their own
    runner that simulates systemctl, modprobe, hdparm, iw and ethtool.
    Dry runs are decided by ``PowersaveSet``: read-only queries still run,
    changing commands are only logged.
    """

    def __init__(self, enabled: bool = True, timeout: float = 30.0, prefix: Sequence[str] = ()):
        self.enabled = enabled
        self.timeout = timeout
        self.prefix = list(prefix)

    @classmethod
    def for_root(cls, root: SysRoot) -> "CommandRunner":
        return cls(enabled=root.is_real)

    def available(self, program: str) -> bool:
        return self.enabled and shutil.which(program) is not None

    def run(self, argv: Sequence[str]) -> CommandResult:
        if not self.enabled:
            return CommandResult(argv, 127, "", "commands are not run against a fake root")
        env = dict(os.environ, LC_ALL="C", LANG="C")
        try:
            proc = subprocess.run(
                self.prefix + list(argv), capture_output=True, text=True, timeout=self.timeout, env=env, check=False
            )
        except FileNotFoundError:
            return CommandResult(argv, 127, "", "%s: command not found" % argv[0])
        except subprocess.TimeoutExpired:
            return CommandResult(argv, 124, "", "timed out after %gs" % self.timeout)
        except OSError as exc:
            return CommandResult(argv, 126, "", str(exc))
        return CommandResult(argv, proc.returncode, proc.stdout, proc.stderr)


class TweakContext:
    """What every tweak gets: the system root, a logger, the detected platform and the command runner."""

    def __init__(
        self,
        root: SysRoot,
        log: Optional[logging.Logger] = None,
        platform: Any = None,
        runner: Optional[CommandRunner] = None,
    ):
        self.root = root
        self.log = log or logging.getLogger("powernap.tweak")
        self.platform = platform  # powernap.platform.PlatformInfo or None
        self.runner = runner if runner is not None else CommandRunner.for_root(root)


class FileChange:
    """Write ``value`` to a sysfs/procfs file.

    ``selector`` files read as a list with the current choice in brackets
    (``[default] performance powersave``) and accept only the bare word, so
    what restore writes is the bracketed word rather than the bytes read.
    """

    kind = "file"

    def __init__(self, path: str, value: str, selector: bool = False):
        self.path = path
        self.value = value
        self.selector = selector

    def current_choice(self, text: str) -> str:
        if self.selector:
            return selected_word(text) or ""
        return text.strip()

    def restore_text(self, original: str) -> Optional[str]:
        """What to write to put ``original`` back; ``None`` means the original bytes themselves."""
        return self.current_choice(original) if self.selector else None

    def describe(self) -> str:
        return "%s = %s" % (self.path, self.value)


class CommandChange:
    """Run ``apply``; ``restore`` undoes it.  The tweak has already checked that a change is needed."""

    kind = "command"

    def __init__(self, what: str, apply: Sequence[str], restore: Sequence[str]):
        self.what = what
        self.apply = list(apply)
        self.restore = list(restore)

    def describe(self) -> str:
        return self.what


def selected_word(text: str) -> Optional[str]:
    """``"[default] performance"`` → ``"default"``; ``None`` when nothing is bracketed."""
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def platform_denies(tweak_cls: Any, platform: Any) -> Optional[str]:
    """Why the platform default keeps this tweak off, or ``None``.

    The one home of the VM/container rule, used by ``PowersaveSet`` (when no
    hardware verdict is given) and by ``powernap.hardware.evaluate``.
    """
    if platform is None:
        return None
    kind = getattr(platform, "effective_kind", None) or getattr(platform, "kind", "physical")
    virt = getattr(platform, "virt", "") or kind
    if kind == "vm" and getattr(tweak_cls, "HARDWARE", False):
        return "virtual machine (%s): hardware tweak off by default (set platform = physical to override)" % virt
    if kind == "container" and (getattr(tweak_cls, "HARDWARE", False) or getattr(tweak_cls, "KERNEL_GLOBAL", False)):
        return "container (%s): host-wide tweak off by default (set platform = physical to override)" % virt
    return None


class Tweak(Declared):
    """Base of all powersave tweaks."""

    KIND = "tweak"
    OPTIONS = common_options()
    HARDWARE = True
    KERNEL_GLOBAL = False
    # Apply order (low first); restore runs in reverse.  Services stop before
    # modules unload; CPUs go offline last so per-CPU knobs are set while online.
    ORDER = 50

    def __init__(self, name: str, options: Dict[str, Any], ctx: TweakContext):
        self.name = name
        self.options = {opt.name: opt.default for opt in self.OPTIONS}
        self.options.update(options)
        self.ctx = ctx
        self.log = ctx.log.getChild(name)
        self.notes: List[str] = []

    @property
    def root(self) -> SysRoot:
        return self.ctx.root

    def plan(self) -> List[Any]:
        """The changes this tweak wants now (``FileChange``/``CommandChange``); may add ``notes``."""
        raise NotImplementedError

    def note(self, text: str) -> None:
        self.notes.append(text)

    def describe(self) -> str:
        doc = (self.__doc__ or "").strip().splitlines()
        return "%s (%s): %s" % (self.name, self.TYPE, doc[0] if doc else "")

    # Helpers shared by the tweaks ------------------------------------------
    def link_name(self, system_path: str) -> Optional[str]:
        """Base name of a sysfs symlink's target (a device's driver, module, ...), or ``None``."""
        try:
            return os.path.basename(os.readlink(self.root.path(system_path)))
        except OSError:
            return None

    def realpath(self, system_path: str) -> str:
        return os.path.realpath(self.root.path(system_path))

    def need_program(self, program: str) -> bool:
        if self.ctx.runner.available(program):
            return True
        self.note("%s is not installed" % program)
        return False
