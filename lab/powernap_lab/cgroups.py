"""cgroup handling: one subtree per lab, one child per host (freeze, kill, memory).

Works with a pure cgroup v2 machine (/sys/fs/cgroup is cgroup2) and with the hybrid layout
(v2 at /sys/fs/cgroup/unified plus v1 controllers): the v2 tree carries cgroup.freeze and
cgroup.kill; in hybrid mode the process is also placed in the v1 "name=systemd" hierarchy
(systemd-nspawn and the container's systemd need it) and in the v1 memory controller.
"""

import os
import time

ROOT = "/sys/fs/cgroup"


def _own_paths():
    """Map hierarchy key ("unified", "name=systemd", "memory", ...) to this process's cgroup path."""
    out = {}
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        for line in f:
            hid, controllers, path = line.rstrip("\n").split(":", 2)
            if hid == "0":
                out["unified"] = path
            else:
                for c in controllers.split(","):
                    out[c] = path
    return out


def hierarchies():
    """Return {key: mountpoint} of the hierarchies the lab uses."""
    if os.path.exists(os.path.join(ROOT, "cgroup.controllers")):
        return {"unified": ROOT}
    found = {}
    if os.path.exists(os.path.join(ROOT, "unified", "cgroup.controllers")):
        found["unified"] = os.path.join(ROOT, "unified")
    if os.path.isdir(os.path.join(ROOT, "systemd")):
        found["name=systemd"] = os.path.join(ROOT, "systemd")
    if os.path.isdir(os.path.join(ROOT, "memory")):
        found["memory"] = os.path.join(ROOT, "memory")
    return found


def lab_roots(lab_name):
    """The lab's top cgroup directory in each hierarchy (not created here)."""
    own = _own_paths()
    roots = {}
    for key, mount in hierarchies().items():
        base = own.get(key, "/")
        # Never nest under a cgroup of our own lab (when called from inside a lab process).
        marker = "/%s-lab" % lab_name
        if marker in base:
            base = base[: base.index(marker)]
        roots[key] = os.path.normpath(os.path.join(mount, base.lstrip("/"), "%s-lab" % lab_name))
    return roots


def unified(roots):
    return roots.get("unified")


def create(roots, child):
    paths = {}
    for key, root in roots.items():
        path = os.path.join(root, child)
        os.makedirs(path, exist_ok=True)
        paths[key] = path
    return paths


def procs_files(paths):
    return [os.path.join(p, "cgroup.procs") for p in paths.values()]


def enter(paths, pid=None):
    """Move pid (default: the caller) into every given cgroup."""
    pid = pid or os.getpid()
    for f in procs_files(paths):
        with open(f, "w", encoding="utf-8") as fh:
            fh.write(str(pid))


def pids(path):
    """All pids in the cgroup at path and below."""
    out = []
    for dirpath, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(dirpath, "cgroup.procs"), encoding="utf-8") as f:
                    out.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    return out


def freeze(path, frozen=True, timeout=5.0):
    with open(os.path.join(path, "cgroup.freeze"), "w", encoding="utf-8") as f:
        f.write("1" if frozen else "0")
    deadline = time.monotonic() + timeout
    want = "frozen %d" % (1 if frozen else 0)
    while time.monotonic() < deadline:
        with open(os.path.join(path, "cgroup.events"), encoding="utf-8") as f:
            if want in f.read().splitlines():
                return True
        time.sleep(0.02)
    return False


def kill(path, timeout=10.0):
    """Kill every process in the cgroup subtree and wait (bounded) until it is empty."""
    if not os.path.isdir(path):
        return True
    kill_file = os.path.join(path, "cgroup.kill")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        remaining = pids(path)
        if not remaining:
            return True
        if os.path.exists(kill_file):
            try:
                with open(kill_file, "w", encoding="utf-8") as f:
                    f.write("1")
            except OSError:
                pass
        else:
            for pid in remaining:
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
        time.sleep(0.05)
    return not pids(path)


def remove_tree(path):
    """rmdir a cgroup and its children, deepest first; ignore what is still busy."""
    if not os.path.isdir(path):
        return True
    ok = True
    for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda t: -t[0].count("/")):
        for _attempt in range(20):
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)
        else:
            ok = False
    return ok


def clear_children(path):
    """Remove leftover sub-cgroups (from a previous boot) below path, keeping path itself."""
    if not os.path.isdir(path):
        return
    for entry in os.listdir(path):
        sub = os.path.join(path, entry)
        if os.path.isdir(sub):
            remove_tree(sub)


def memory_bytes(paths):
    """Memory charged to the cgroup: v2 memory.current or v1 memory.usage_in_bytes, else None."""
    for key in ("unified", "memory"):
        path = paths.get(key)
        if not path:
            continue
        for name in ("memory.current", "memory.usage_in_bytes"):
            try:
                with open(os.path.join(path, name), encoding="utf-8") as f:
                    return int(f.read())
            except (OSError, ValueError):
                continue
    return None
