"""Error types shared by every part of the engine."""

from typing import Optional


class PowernapError(Exception):
    """Base class of the engine's own errors."""


class ConfigError(PowernapError):
    """One problem in a configuration file, located as FILE:LINE.

    ``str()`` gives the ``FILE:LINE: message`` form that ``check-config``
    prints, so every caller reports errors the same way.
    """

    def __init__(self, message: str, path: Optional[str] = None, line: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line

    def __str__(self) -> str:
        where = self.path or "<config>"
        if self.line is not None:
            where = "%s:%d" % (where, self.line)
        return "%s: %s" % (where, self.message)


class MonitorError(PowernapError):
    """A monitor could not tell whether the host is active (counts as activity by default)."""


class ActionError(PowernapError):
    """An action (nap stage) failed; the host stays awake."""
