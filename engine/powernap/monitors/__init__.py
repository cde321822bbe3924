"""Monitors: is there activity of my kind?  Importing this package registers every type.

=========== ==================================================================== ==================
type        activity while / when                                                how it looks
=========== ==================================================================== ==================
process     a process whose full command line matches a regex runs              netlink proc events
                                                                                 (root), else /proc
io          matching processes read/write more than a threshold per second       /proc/PID/io deltas
load        the 1/5/15-minute load is above a threshold (CPUs x factor)          /proc/loadavg
input       a keyboard, mouse, touchpad... reports input (hot-plug included)     evdev fds + inotify
console     a local console/serial tty had input within max_idle                 tty atime
users       a (matching) user is logged in and used their tty within max_idle    /run/utmp, logind
            (sessions without a terminal count while they last)                 (sshd titles without)
tcp         >= min_connections established to local ports (IPv4+IPv6)           sock_diag (/proc/net/tcp
                                                                                 in a fake root) + SYN/FIN/
                                                                                 RST packet socket
udp         datagrams arrive for local ports (never bound)                       packet socket
wol         a magic packet for one of this host's MACs arrives (UDP, 0x0842)     packet socket
disk        disks transfer more than a threshold per second                      /proc/diskstats
net         interfaces receive/send more than a threshold per second             /proc/net/dev
ping        any listed host answers ping                                         background ping
command     a command exits 0                                                    background command
http        a status page shows connections/requests per second above limits     background fetch
nut         the UPS status (NUT upsd) contains one of the listed tokens          background TCP
inhibitors  a logind block inhibitor lock (sleep/idle) is held                   /run/systemd/inhibit
timers      a systemd timer or calendar entry is due within a window             systemctl (cached),
            (the next one is also the RTC wake time: next_wake())                OnCalendar subset
=========== ==================================================================== ==================

Helpers (no monitors): procfs (cheap /proc readers), packet (AF_PACKET + BPF),
inotify (ctypes), probing (background probes), oncalendar (calendar syntax).
"""

from . import (  # noqa: F401  (imported to register the monitor classes)
    command,
    disk,
    http,
    inhibitors,
    inputdev,
    load,
    net,
    nut,
    process,
    tcp,
    timers,
    udp,
    users,
    wol,
)
from .base import MONITOR_COMMON_OPTIONS, Monitor, MonitorContext

__all__ = ["MONITOR_COMMON_OPTIONS", "Monitor", "MonitorContext"]
