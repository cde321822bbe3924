# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for powernap.fleet.engine: the controller's part of converging a host in one round trip.

It names the engine release this collection ships (its digest), its unit and its secret options, and runs the
module once.  Only a host that lacks the release gets the archive (packed once per release on the controller,
shared by every host and fork) and a second run.  In check mode on a host without the engine, the config is
checked here, with the engine this collection ships.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

from ansible_collections.powernap.fleet.plugins.module_utils.engine import mask_ini
from ansible_collections.powernap.fleet.plugins.module_utils.hwlist import plan
from ansible_collections.powernap.fleet.plugins.plugin_utils.engine import engine_manifest, secret_option_names
from ansible_collections.powernap.fleet.plugins.plugin_utils.profile import config_errors

MODULE = "powernap.fleet.engine"
# The collection's engine/ directory (the role's role_path/../../engine).
ENGINE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "engine")
CHECK_TIMEOUT = 60


def cache_dir():
    """The controller's private cache of engine archives and option tables (mode 0700, this user's)."""
    cache = os.path.join(tempfile.gettempdir(), "powernap-fleet-%d" % os.geteuid())
    os.makedirs(cache, 0o700, exist_ok=True)
    info = os.lstat(cache)
    if info.st_uid != os.geteuid() or info.st_mode & 0o077 or not stat.S_ISDIR(info.st_mode):
        raise AnsibleError("%s must be a private directory of this user (mode 0700)" % cache)
    return cache


def secret_options(manifest, engine_dir=ENGINE_DIR):
    """The engine's secret option names, read from its tables once per engine release (not once per host)."""
    cached = os.path.join(cache_dir(), "secret-options-%s.json" % manifest["digest"])
    try:
        with open(cached) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        pass
    names = sorted(secret_option_names(engine_dir))
    handle, staged = tempfile.mkstemp(dir=os.path.dirname(cached), suffix=".tmp")
    with os.fdopen(handle, "w") as out:
        json.dump(names, out)
    os.replace(staged, cached)
    return names


def archive_path(manifest, engine_dir=ENGINE_DIR):
    """The engine archive for this release, packed once on the controller (the private cache)."""
    cache = cache_dir()
    target = os.path.join(cache, "engine-%s.tar.gz" % manifest["digest"])
    if os.path.exists(target):
        return target
    # Every fork of a run may want it at once: the first packs it, the others wait and reuse it.
    with open(os.path.join(cache, "engine.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(target):
            handle, staged = tempfile.mkstemp(dir=cache, suffix=".tmp")
            os.close(handle)
            with tarfile.open(staged, "w:gz") as bundle:
                for entry in manifest["files"]:
                    # Regular files only: symlinks in the engine (shared module_utils) are followed.
                    source_path = os.path.join(engine_dir, entry["path"])
                    info = tarfile.TarInfo(entry["path"])
                    info.size = os.stat(source_path).st_size
                    info.mode = int(entry["mode"], 8)
                    info.uname = info.gname = "root"
                    with open(source_path, "rb") as source:
                        bundle.addfile(info, source)
            os.replace(staged, target)
    return target


def check_on_controller(config, shown_as="/etc/powernap/powernap.conf", hardware=False, engine_dir=ENGINE_DIR):
    """The engine's check-config errors for ``config`` (or a hardware list), run here with this collection's engine."""
    private = tempfile.mkdtemp(prefix="powernap-check-")
    try:
        path = os.path.join(private, "powernap.conf")
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(config)
        env = dict(os.environ, PYTHONPATH=engine_dir, PYTHONDONTWRITEBYTECODE="1")
        proc = subprocess.run(
            [sys.executable, "-m", "powernap", "check-config"] + (["--hardware"] if hardware else []) + [path],
            capture_output=True,
            text=True,
            env=env,
            timeout=CHECK_TIMEOUT,
            check=False,
        )
        if proc.returncode == 0:
            return []
        lines = [line.replace(path, shown_as) for line in (proc.stdout + proc.stderr).splitlines()]
        return [line for line in lines if line.strip()] or ["check-config failed (rc=%d)" % proc.returncode]
    finally:
        shutil.rmtree(private, ignore_errors=True)


class ActionModule(ActionBase):
    TRANSFERS_FILES = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        try:
            manifest = engine_manifest(ENGINE_DIR)
            with open(os.path.join(ENGINE_DIR, "systemd", "powernapd.service")) as unit:
                args["unit"] = unit.read()
            args["digest"] = manifest["digest"]
            args["secret_options"] = sorted(set(args.get("secret_options") or []) | set(secret_options(manifest)))
            module_result = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
            installed = []
            if module_result.get("package_manager") and not module_result.get("failed"):
                module_result = self._install_packages(module_result, args, task_vars)
                installed = module_result.get("missing_packages") or []
            if module_result.get("archive_needed"):
                module_result = self._run_with_archive(args, manifest, task_vars)
                if installed:  # a fresh host: what was installed before the engine, not the last run's []
                    module_result["missing_packages"] = installed
        except (AnsibleError, OSError, ValueError, tarfile.TarError, subprocess.SubprocessError) as exc:
            result.update(failed=True, msg="powernap.fleet.engine: %s" % exc)
            return result
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        module_result.pop("archive_needed", None)
        module_result.pop("package_manager", None)
        config = args.get("config") or ""
        secret = set(args["secret_options"])
        host = task_vars.get("inventory_hostname", "")
        if self._task.check_mode and not module_result.get("failed") and not module_result.get("engine_ready"):
            self._check_here(module_result, config, args, host)
        if module_result.get("config_errors") and module_result.get("checked_on"):
            # Each error named by section and option (the values of secret options masked).
            described = config_errors(module_result["config_errors"], mask_ini(config, secret))
            where = (
                "checked on the controller: the host has no engine yet"
                if module_result.get("checked_on") == "controller"
                else "/etc/powernap/powernap.conf was left as it was"
            )
            module_result["msg"] = "%s: the config is invalid (%s): %s" % (host, where, "; ".join(described))
        macs = (module_result.get("ansible_facts") or {}).get("powernap_wol_macs")
        if macs and task_vars.get("powernap_mac") is None:
            # The wake module's MAC: the inventory's powernap_mac, else the host's first wake NIC.
            module_result["ansible_facts"]["powernap_mac"] = macs[0]
        module_result.pop("invocation", None)
        result.update(module_result)
        result["config"] = mask_ini(config, secret)
        return result

    def _check_here(self, module_result, config, args, host):
        """Check mode on a host without the engine: judge the config and the hardware list here instead."""
        if module_result.get("config_changed"):
            errors = check_on_controller(config)
            module_result["checked_on"] = "controller"
            if errors:
                module_result.update(failed=True, config_errors=errors, changed=False)
                return
        entries = args.get("hardware_entries") or []
        if args.get("hardware_list") and entries:
            name = "/etc/powernap/hardware.d/%s.conf" % args["hardware_list"]
            try:
                full = [dict({"verdict": "deny", "match": {}}, **entry) for entry in entries]
                errors = check_on_controller(plan(None, full, "present", True), name, hardware=True)
            except ValueError as exc:
                errors = ["hardware_entries: %s" % exc]
            if errors:
                module_result.update(
                    failed=True,
                    changed=False,
                    config_errors=errors,
                    msg="%s: the hardware list is invalid (checked on the controller: the host has no engine yet): %s"
                    % (host, "; ".join(errors)),
                )

    def _install_packages(self, module_result, args, task_vars):
        """Install what the module found missing with the host's package module, then run the module again."""
        missing = module_result["missing_packages"]
        manager = module_result["package_manager"]
        package_args = {"name": missing, "state": "present"}
        if manager == "apt":
            # A host without package lists (a minimal image) knows no package: refresh lists older than an hour.
            package_args.update(update_cache=True, cache_valid_time=3600)
        installed = self._execute_module(
            module_name="ansible.legacy." + manager, module_args=package_args, task_vars=task_vars
        )
        if installed.get("failed"):
            return dict(
                module_result,
                failed=True,
                msg="could not install %s: %s" % (", ".join(missing), installed.get("msg", "")),
            )
        again = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
        again["missing_packages"] = missing
        again["changed"] = True
        return again

    def _run_with_archive(self, args, manifest, task_vars):
        """Copy the engine archive to the host and run the module again to install it."""
        local = archive_path(manifest)
        if not self._connection._shell.tmpdir:
            self._make_tmp_path()
        remote = self._connection._shell.join_path(self._connection._shell.tmpdir, "powernap-engine.tar.gz")
        self._transfer_file(local, remote)
        self._fixup_perms2((self._connection._shell.tmpdir, remote))
        return self._execute_module(module_name=MODULE, module_args=dict(args, archive=remote), task_vars=task_vars)
