"""input monitor: evdev stand-ins (FIFOs) in a fake /dev/input, hot-plug through real inotify."""

import os
import select

import pytest
from monitor_fakes import make, wait_event, write

from powernap.errors import MonitorError
from powernap.monitors.inputdev import EV_KEY, EV_REL, INPUT_EVENT

EV_SYN, EV_MSC = 0x00, 0x04


def add_device(root, node, name):
    write(root, "/sys/class/input/%s/device/name" % node, name + "\n")
    path = os.path.join(str(root), "dev", "input", node)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mkfifo(path)
    return path


def send(path, *events):
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, b"".join(INPUT_EVENT.pack(1, 0, kind, code, value) for kind, code, value in events))
    finally:
        os.close(fd)


@pytest.fixture
def monitor_factory():
    made = []

    def factory(root, **options):
        monitor = make("input", root=root, **options)
        monitor.open()
        made.append(monitor)
        return monitor

    yield factory
    for monitor in made:
        monitor.close()


def test_key_press_on_any_device_is_activity(tmp_path, monitor_factory):
    keyboard = add_device(tmp_path, "event0", "AT Translated Set 2 keyboard")
    mouse = add_device(tmp_path, "event5", "Logitech USB Optical Mouse")
    monitor = monitor_factory(tmp_path)
    assert len(monitor.fds()) == 3  # two devices + inotify
    assert monitor.check() is None
    send(mouse, (EV_REL, 0, 5), (EV_SYN, 0, 0))
    reasons = wait_event(monitor)
    assert list(reasons.values()) == ["input on event5 (Logitech USB Optical Mouse)"]
    send(keyboard, (EV_MSC, 4, 30), (EV_KEY, 30, 1), (EV_SYN, 0, 0))
    assert list(wait_event(monitor).values()) == ["input on event0 (AT Translated Set 2 keyboard)"]


def test_sync_only_noise_is_not_activity(tmp_path, monitor_factory):
    device = add_device(tmp_path, "event1", "Some device")
    monitor = monitor_factory(tmp_path)
    send(device, (EV_SYN, 0, 0), (EV_MSC, 4, 1))
    fd = monitor.paths["event1"]
    assert select.select([fd], [], [], 2)[0] == [fd]
    assert monitor.on_readable(fd) is None


def test_ignored_and_filtered_devices_are_not_opened(tmp_path, monitor_factory):
    add_device(tmp_path, "event0", "Lid Switch")
    add_device(tmp_path, "event1", "ST LIS3LV02DL Accelerometer")
    add_device(tmp_path, "event2", "USB Keyboard")
    add_device(tmp_path, "event3", "Touchpad")
    assert sorted(monitor_factory(tmp_path).paths) == ["event2", "event3"]
    assert sorted(monitor_factory(tmp_path, devices="(?i)keyboard").paths) == ["event2"]


def test_hot_plug_and_unplug(tmp_path, monitor_factory):
    add_device(tmp_path, "event0", "USB Keyboard")
    monitor = monitor_factory(tmp_path)
    assert monitor.inotify is not None, "inotify must be available on Linux"
    assert sorted(monitor.paths) == ["event0"]
    # udev-like order: sysfs name first, then the device node appears.
    new = add_device(tmp_path, "event7", "Bluetooth Mouse")
    assert wait_event(monitor, 1.0) == {}  # the inotify event itself is not activity
    assert sorted(monitor.paths) == ["event0", "event7"]
    assert monitor.paths["event7"] in monitor.fds()
    send(new, (EV_REL, 1, -3))
    assert list(wait_event(monitor).values()) == ["input on event7 (Bluetooth Mouse)"]
    os.unlink(new)
    wait_event(monitor, 0.5)
    assert sorted(monitor.paths) == ["event0"]
    assert len(monitor.fds()) == 2


def test_without_inotify_check_rescans(tmp_path, monitor_factory):
    add_device(tmp_path, "event0", "USB Keyboard")
    monitor = monitor_factory(tmp_path)
    monitor.inotify.close()
    monitor.inotify = None
    add_device(tmp_path, "event1", "Mouse")
    assert monitor.check() is None
    assert sorted(monitor.paths) == ["event0", "event1"]


def test_fifo_end_of_file_reopens_instead_of_spinning(tmp_path, monitor_factory):
    device = add_device(tmp_path, "event0", "Keyboard")
    monitor = monitor_factory(tmp_path)
    send(device, (EV_KEY, 30, 1))  # writer opens and closes: the FIFO then reads EOF
    assert list(wait_event(monitor).values()) == ["input on event0 (Keyboard)"]
    fd = monitor.paths["event0"]
    if select.select([fd], [], [], 0.2)[0]:
        assert monitor.on_readable(fd) is None
    assert not select.select([monitor.paths["event0"]], [], [], 0.2)[0], "device fd stays readable"


def test_missing_dev_input_is_an_error(tmp_path, monitor_factory):
    monitor = monitor_factory(tmp_path)
    assert monitor.fds() == []
    with pytest.raises(MonitorError, match="/dev/input"):
        monitor.check()


def test_dev_input_removed_and_created_again_keeps_hot_plug(tmp_path, monitor_factory):
    """devtmpfs removes /dev/input with the last input device and creates it anew with the next."""
    old = add_device(tmp_path, "event0", "USB Keyboard")
    monitor = monitor_factory(tmp_path)
    os.unlink(old)
    os.rmdir(os.path.join(str(tmp_path), "dev", "input"))
    # The node's removal comes first; the directory's own deletion once the node's fd is closed
    # (an open child pins its directory).
    for _unused in range(5):
        watch = monitor.inotify.fd if monitor.inotify is not None else None
        if watch is None or not select.select([watch], [], [], 1)[0]:
            break
        assert monitor.on_readable(watch) is None
    assert monitor.paths == {} and monitor.fds() == []  # the watch died with its directory
    assert monitor.check() is None  # no input device now: idle, not an error
    new = add_device(tmp_path, "event3", "USB Mouse")  # creates /dev/input again
    monitor.check()  # within one interval the directory is watched again and rescanned
    assert sorted(monitor.paths) == ["event3"]
    assert monitor.inotify is not None
    later = add_device(tmp_path, "event4", "Second Keyboard")
    wait_event(monitor, 0.5)
    assert sorted(monitor.paths) == ["event3", "event4"], "hot-plug stopped after /dev/input was re-created"
    send(later, (EV_KEY, 30, 1))
    assert list(wait_event(monitor).values()) == ["input on event4 (Second Keyboard)"]
    send(new, (EV_REL, 0, 1))
    assert list(wait_event(monitor).values()) == ["input on event3 (USB Mouse)"]
