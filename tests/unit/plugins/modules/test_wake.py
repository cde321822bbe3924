# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
import json
import socket

import pytest

from ansible_collections.powernap.fleet.plugins.modules import wake
from ansible_collections.powernap.fleet.tests.unit.plugins.modules.utils import patch_module_args


def run_module(capsys, args, check_mode=False):
    if check_mode:
        args = dict(args, _ansible_check_mode=True)
    with patch_module_args(args), pytest.raises(SystemExit) as info:
        wake.main()
    return info.value.code, json.loads(capsys.readouterr().out)


@pytest.fixture
def receiver():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


def test_single_target_by_mac(capsys, receiver):
    port = receiver.getsockname()[1]
    code, result = run_module(
        capsys, {"mac": "02:50:4e:00:00:0a", "broadcast": "127.0.0.1", "port": port, "repeat": 2, "method": "wol"}
    )
    assert code == 0
    assert result["changed"] is True and result["woken_by"] == "wol" and result["method"] == "wol"
    assert receiver.recv(2048) == receiver.recv(2048) == b"\xff" * 6 + bytes.fromhex("02504e00000a") * 16


def test_batch_with_a_bad_target_fails_only_that_target(capsys, receiver):
    port = receiver.getsockname()[1]
    code, result = run_module(
        capsys,
        {
            "broadcast": "127.0.0.1",
            "port": port,
            "repeat": 1,
            "targets": [{"name": "good", "mac": "02:50:4e:00:00:0b"}, {"name": "bad", "mac": "zz"}],
        },
    )
    assert code == 1
    assert result["failed"] is True and "bad: invalid MAC" in result["msg"]
    assert [r["failed"] for r in result["results"]] == [False, True]
    assert result["summary"]["by_wol"] == 1
    assert receiver.recv(2048).endswith(bytes.fromhex("02504e00000b"))


def test_secureon_is_never_returned(capsys, receiver):
    port = receiver.getsockname()[1]
    secret = "11:22:33:44:55:66"
    code, result = run_module(
        capsys, {"mac": "02:50:4e:00:00:0c", "secureon": secret, "broadcast": "127.0.0.1", "port": port, "repeat": 1}
    )
    assert code == 0
    assert secret not in json.dumps(result)
    assert receiver.recv(2048)[-6:] == bytes.fromhex("112233445566")


def test_check_mode_validates_and_sends_nothing(capsys, receiver):
    port = receiver.getsockname()[1]
    code, result = run_module(capsys, {"mac": "02:50:4e:00:00:0d", "broadcast": "127.0.0.1", "port": port}, True)
    assert code == 0 and result["changed"] is True
    receiver.settimeout(0.3)
    with pytest.raises(socket.timeout):
        receiver.recv(2048)
    code, result = run_module(capsys, {"mac": "bogus"}, True)
    assert code == 1 and "invalid MAC" in result["msg"]


def test_wol_wake_needs_no_bmc_library_and_ipmi_names_the_missing_one(capsys, receiver, monkeypatch):
    """A relay without pyghmi still sends the magic packet (no escalation); IPMI says pyghmi is missing."""
    from ansible_collections.powernap.fleet.plugins.module_utils import ipmi

    monkeypatch.setattr(ipmi, "HAS_PYGHMI", False)
    monkeypatch.setattr(ipmi, "PYGHMI_IMPORT_ERROR", ImportError("No module named 'pyghmi'"))
    port = receiver.getsockname()[1]
    args = {"mac": "02:50:4e:00:00:0e", "broadcast": "127.0.0.1", "port": port, "repeat": 1, "bmc_host": "198.19.0.1"}
    code, result = run_module(capsys, dict(args, method="wol"))
    assert code == 0 and result["woken_by"] == "wol"
    assert receiver.recv(2048).endswith(bytes.fromhex("02504e00000e"))
    code, result = run_module(capsys, dict(args, method="ipmi"))
    assert code == 1 and "pyghmi" in result["msg"]
