# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine release the role installs, and the secret options of its tables (plugins/plugin_utils/engine.py)."""

import os

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.powernap.fleet.plugins.plugin_utils.engine import (
    MASK,
    engine_manifest,
    mask_secrets,
    secret_option_names,
)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
ENGINE_DIR = os.path.join(REPO, "engine")


def make_engine(root):
    (root / "powernap" / "monitors").mkdir(parents=True)
    (root / "powernap" / "__pycache__").mkdir()
    (root / "bin").mkdir()
    (root / "tests").mkdir()
    (root / "powernap" / "__init__.py").write_text("VERSION = 1\n")
    (root / "powernap" / "monitors" / "tcp.py").write_text("x = 1\n")
    (root / "powernap" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (root / "powernap" / ".hidden").write_text("no")
    (root / "shared.py").write_text("SHARED = 1\n")
    os.symlink("../shared.py", str(root / "powernap" / "link.py"))
    (root / "bin" / "powernap").write_text("#!/usr/bin/python3\n")
    (root / "tests" / "test_x.py").write_text("")
    return root


def test_lists_package_and_commands_without_caches_or_tests(tmp_path):
    manifest = engine_manifest(str(make_engine(tmp_path)))
    assert [f["path"] for f in manifest["files"]] == [
        "powernap/__init__.py",
        "powernap/link.py",
        "powernap/monitors/tcp.py",
        "bin/powernap",
    ]
    assert manifest["dirs"] == ["powernap", "powernap/monitors", "bin"]
    assert {f["path"]: f["mode"] for f in manifest["files"]}["bin/powernap"] == "0755"
    assert {f["path"]: f["mode"] for f in manifest["files"]}["powernap/__init__.py"] == "0644"
    assert manifest["release"] == manifest["digest"][:16]


def test_digest_follows_content_including_symlinked_files(tmp_path):
    root = make_engine(tmp_path)
    before = engine_manifest(str(root))["digest"]
    (root / "powernap" / "__pycache__" / "y.pyc").write_bytes(b"1")
    assert engine_manifest(str(root))["digest"] == before
    (root / "shared.py").write_text("SHARED = 2\n")
    after = engine_manifest(str(root))["digest"]
    assert after != before
    (root / "shared.py").write_text("SHARED = 1\n")
    assert engine_manifest(str(root))["digest"] == before


def test_refuses_a_directory_without_the_package(tmp_path):
    with pytest.raises(AnsibleFilterError, match="no powernap/ package"):
        engine_manifest(str(tmp_path))


def test_the_real_engine_ships_the_magic_packet_as_a_file():
    manifest = engine_manifest(os.path.join(REPO, "engine"))
    paths = [f["path"] for f in manifest["files"]]
    assert "powernap/magic_packet.py" in paths
    assert "powernap/cli.py" in paths
    assert not [p for p in paths if "__pycache__" in p or p.startswith("tests/")]


def test_secret_options_come_from_the_engine_option_tables():
    names = secret_option_names(ENGINE_DIR)
    # Every option the engine's and powerwaked's tables declare secret=True, and only those.
    assert {"token", "password", "secureon", "secret", "bmc_password"} <= names
    assert not names & {"url", "user", "username", "bmc_user", "host", "type"}


def test_mask_secrets_hides_every_secret_value_and_nothing_else():
    sections = {
        "server": {"url": "udp://10.0.0.1:7490", "token": "fleet-token"},
        "monitor.ups": {"type": "nut", "user": "monuser", "password": "nut-pass"},
        "monitor.wake": {"type": "wol", "secureon": "01:02:03:04:05:06"},
        "monitor.ssh": {"type": "tcp", "ports": 22},
        "monitor.none": None,
        "monitor.empty": {"type": "nut", "password": ""},
    }
    masked = mask_secrets(sections, ENGINE_DIR)
    assert masked["server"] == {"url": "udp://10.0.0.1:7490", "token": MASK}
    assert masked["monitor.ups"] == {"type": "nut", "user": "monuser", "password": MASK}
    assert masked["monitor.wake"]["secureon"] == MASK
    assert masked["monitor.ssh"] == sections["monitor.ssh"]
    assert masked["monitor.none"] is None and masked["monitor.empty"]["password"] == ""
    assert sections["server"]["token"] == "fleet-token"  # the input is not changed
