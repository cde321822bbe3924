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
    main = tmp_path / "powerwaked.conf"
    main.write_text("[powerwaked]\nsecret_file = %s\nlisten = 127.0.0.1\nport = 7000\n" % secret)
    dropins = tmp_path / "powerwaked.d"
    dropins.mkdir()
    (dropins / "10-port.conf").write_text("[powerwaked]\nport = 7001\n")
    from powernap.server.config import config_files

    config, errors = load_config(config_files(str(main)))
    assert errors == [] and config.secret == "from-the-vault-0123456789" and config.server["port"] == 7001
