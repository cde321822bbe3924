"""The line-tracking INI reader."""

from powernap import ini


def test_values_remember_file_and_line(tmp_path):
    main = tmp_path / "powernap.conf"
    main.write_text("# comment\n[powernap]\ninterval = 1\n\n[monitor.ssh]\ntype: tcp\nports = 22\n")
    doc, errors = ini.read_files([str(main)])
    assert errors == []
    section = doc.get("monitor.ssh")
    assert section.texts() == {"type": "tcp", "ports": "22"}
    assert section.where("ports") == (str(main), 7)
    assert str(section.error("bad port", "ports")) == "%s:7: bad port" % main


def test_dropins_override_per_key_in_name_order(tmp_path):
    main = tmp_path / "powernap.conf"
    main.write_text("[powernap]\ninterval = 1\ngrace = 60\n")
    dropins = tmp_path / "conf.d"
    dropins.mkdir()
    (dropins / "20-late.conf").write_text("[powernap]\ngrace = 30\n")
    (dropins / "10-early.conf").write_text("[powernap]\ngrace = 10\ninterval =\n")
    (dropins / "ignored.txt").write_text("[powernap]\ngrace = 99\n")
    paths = ini.config_files(str(main))
    assert [p.split("/")[-1] for p in paths] == ["powernap.conf", "10-early.conf", "20-late.conf"]
    doc, errors = ini.read_files(paths)
    assert errors == []
    values = doc.get("powernap").values
    assert values["grace"].text == "30" and values["grace"].path.endswith("20-late.conf")
    assert values["interval"].text == ""


def test_continuation_lines_join():
    doc, errors = ini.parse_text("[monitor.procs]\nregex = nginx\n  postgres\n\tmysqld\n", "x.conf")
    assert errors == []
    assert doc.get("monitor.procs").values["regex"].text == "nginx\npostgres\nmysqld"


def test_syntax_errors_are_located_and_parsing_goes_on():
    text = "key = outside\n[ok]\nfine = 1\n[broken\nnot a pair\n = empty\n[ok]\nmore = 2\n"
    doc, errors = ini.parse_text(text, "bad.conf")
    assert [str(e) for e in errors] == [
        "bad.conf:1: option outside of any [section]",
        "bad.conf:4: malformed section header '[broken'",
        "bad.conf:5: expected 'key = value', got 'not a pair'",
        "bad.conf:6: empty option name",
    ]
    assert doc.get("ok").texts() == {"fine": "1", "more": "2"}


def test_unreadable_file_is_an_error_not_skipped(tmp_path):
    missing = tmp_path / "nope.conf"
    doc, errors = ini.read_files([str(missing)])
    assert len(errors) == 1 and str(errors[0]).startswith(str(missing) + ": cannot read")
    assert list(doc) == []


def test_section_names_and_keys_are_case_insensitive():
    doc, _errors = ini.parse_text("[Monitor.SSH]\nPorts = 22\n", "c.conf")
    assert doc.get("monitor.ssh").texts() == {"ports": "22"}
    assert [s.name for s in doc.with_prefix("monitor.")] == ["monitor.ssh"]
