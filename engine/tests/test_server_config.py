"""powerwaked.conf: declared sections, FILE:LINE errors, group membership, secrets from a file."""

from powernap.server.config import load_config

GOOD = """[powerwaked]
secret = 0123456789abcdef-fleet
listen = 198.18.0.1
interface = br0
wol_transport = raw

[proxy]
ignore_macs = 02:00:00:00:00:01
cooldown = 2m

[host.h1]
mac = 52-54-00-00-00-01
groups = web

[group.web]
hosts = h2

[ups.rack1]
ups = rack1
groups = web

[schedule.office]
groups = web
wake = Mon..Fri 07:00

[cluster.front]
group = web
min_awake = 2
"""


def test_good_config(tmp_path):
    path = tmp_path / "powerwaked.conf"
    path.write_text(GOOD)
    config, errors = load_config([str(path)])
    assert errors == []
    assert config.hosts["h1"]["mac"] == ("52:54:00:00:00:01",)
    assert config.group_members() == {"web": ["h2", "h1"]}
    assert config.proxy["cooldown"] == 120.0 and config.proxy["ignore_macs"] == ("02:00:00:00:00:01",)
    assert config.named["cluster"]["front"]["min_awake"] == 2
    assert config.named["schedule"]["office"]["wake"].next_after(0) is not None


def test_every_error_has_file_and_line(tmp_path):
    path = tmp_path / "powerwaked.conf"
    path.write_text(
        "[powerwaked]\nsecret = short\n\n[host.h1]\nmac = not-a-mac\n[ups.r]\nups = r\ngroups = nosuch\n"
        "[frobnicate]\n[cluster]\n[schedule.s]\ngroups = nosuch\n"
    )
    _config, errors = load_config([str(path)])
    text = [str(e) for e in errors]
    assert "%s:5: option 'mac': list item 'not-a-mac'" % path in text[0]
    assert any(t.startswith("%s:9: unknown section [frobnicate]" % path) for t in text)
    assert any(t.startswith("%s:10: section [cluster] needs a name" % path) for t in text)
    assert any(t.startswith("%s:2: the fleet secret is too short" % path) for t in text)
    assert any(t.startswith("%s:8: unknown group 'nosuch'" % path) for t in text)
    assert any("a schedule needs wake, nap or both" in t for t in text)


def test_secret_from_a_file_and_dropins_win(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-the-vault-0123456789\n")
    secret.chmod(0o600)
    main = tmp_path / "powerwaked.conf"
    main.write_text("[powerwaked]\nsecret_file = %s\nlisten = 127.0.0.1\nport = 7000\n" % secret)
    dropins = tmp_path / "powerwaked.d"
    dropins.mkdir()
    (dropins / "10-port.conf").write_text("[powerwaked]\nport = 7001\n")
    from powernap.server.config import config_files

    config, errors = load_config(config_files(str(main)))
    assert errors == [] and config.secret == "from-the-vault-0123456789" and config.server["port"] == 7001


# -- issue 13: every option audited; errors always FILE:LINE, never a secret, never a traceback ---
import pytest  # noqa: E402

from powernap.server.config import NAMED, SECTIONS  # noqa: E402

HOSTILE = ["", "x" * 5000, "nan", "inf", "-1", "1e999", "999.1.1.1", "../../etc/passwd", "-oProxyCommand=sh", "a b"]
BASE = "[powerwaked]\nsecret = 0123456789abcdef-fleet\n[group.g]\nhosts = a\n"
REQUIRED = {"ups": "ups = u\ngroups = g\n", "schedule": "groups = g\nwake = 07:00\n", "cluster": "group = g\n"}


@pytest.mark.parametrize("kind", sorted(SECTIONS))
def test_no_value_of_any_option_raises_and_every_error_is_located(tmp_path, kind):
    cls = SECTIONS[kind]
    header = "[%s]\n" % (kind + ".t" if kind in NAMED else kind)
    path = tmp_path / "powerwaked.conf"
    for opt in cls.OPTIONS:
        for value in HOSTILE:
            body = "".join(line for line in REQUIRED.get(kind, "").splitlines(True) if not line.startswith(opt.name))
            if kind == "powerwaked":
                secret = "" if opt.name == "secret" else "secret = 0123456789abcdef-fleet\n"
                text = header + secret + "%s = %s\n[group.g]\nhosts = a\n" % (opt.name, value)
            else:
                text = BASE + header + body + "%s = %s\n" % (opt.name, value)
            path.write_text(text)
            _config, errors = load_config([str(path)])  # must not raise, whatever the value
            for error in errors:
                assert str(error).startswith(str(path) + ":"), str(error)
                if opt.secret and len(value) > 3:
                    assert value not in str(error)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[host.a]\nip = not-an-ip\n", "not an IP address"),
        ("[powerwaked]\nbroadcast = nowhere\n", "not an IP address"),
        ("[powerwaked]\nlisten = 999.1.1.1\n", "not an IP address"),
        ("[powerwaked]\nwol_transport = smoke\n", "not one of"),
        ("[host.a]\nsecureon = hunter2hunter2\n", "SecureOn"),
        ("[host.a]\nbmc = bmc..example\n", "neither a host name"),
        ("[ups.u]\nups = x\ngroups = g\nhost = -x\n", "neither a host name"),
        ("[group.g]\nhosts = a\n[cluster.c]\ngroup = g\nsource = url\nurl = gopher://x\n", "http"),
        ("[powerwaked]\nstate_file = relative/path.json\n", "absolute path"),
        ("[powerwaked]\ninterface = eth0;reboot\n", "interface name"),
        ("[ipmi]\nuser = -x\n", "user name"),
        ("[group.g]\nhosts = a\n[schedule.s]\ngroups = g\nwake = Someday 07:00\n", "calendar"),
    ],
)
def test_bad_values_are_refused_with_file_and_line(tmp_path, text, needle):
    path = tmp_path / "powerwaked.conf"
    path.write_text("[powerwaked]\nsecret = 0123456789abcdef-fleet\n" + text)
    _config, errors = load_config([str(path)])
    assert any(needle in str(e) for e in errors), [str(e) for e in errors]
    assert all(str(e).startswith(str(path) + ":") for e in errors)
    assert not any("hunter2" in str(e) for e in errors)


def test_a_secret_file_readable_by_group_or_others_is_refused(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-the-vault-0123456789\n")
    main = tmp_path / "powerwaked.conf"
    main.write_text("[powerwaked]\nsecret_file = %s\nlisten = 127.0.0.1\n" % secret)
    for mode in (0o644, 0o640, 0o604):
        secret.chmod(mode)
        config, errors = load_config([str(main)])
        assert any("readable by its group or others" in str(e) for e in errors)
        assert config.secret != "from-the-vault-0123456789"
    secret.chmod(0o600)
    assert load_config([str(main)])[1] == []


def test_a_missing_section_still_names_the_file(tmp_path):
    path = tmp_path / "powerwaked.conf"
    path.write_text("[proxy]\nenabled = no\n")
    _config, errors = load_config([str(path)])
    assert [str(e) for e in errors] == [
        "%s:1: [powerwaked] a fleet secret is required (secret or secret_file)" % path,
        "%s:1: [powerwaked] listen is required: the segment interface's address (0.0.0.0: all)" % path,
    ]


def test_group_members_of_10000_hosts_are_gathered_in_linear_time(tmp_path):
    import time

    text = "[group.web]\nhosts = h00001, h00000\n" + "".join(
        "[host.h%05d]\nmac = 52:54:00:%02x:%02x:%02x\ngroups = web\n" % (i, i >> 16, (i >> 8) & 255, i & 255)
        for i in range(10000)
    )
    path = tmp_path / "powerwaked.conf"
    path.write_text("[powerwaked]\nsecret = 0123456789abcdef-fleet\nlisten = 127.0.0.1\n" + text)
    config, errors = load_config([str(path)])
    assert errors == []
    started = time.perf_counter()
    members = config.group_members()
    assert time.perf_counter() - started < 0.1
    assert len(members["web"]) == 10000 and members["web"][:3] == ["h00001", "h00000", "h00002"]
