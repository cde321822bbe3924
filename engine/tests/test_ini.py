"""The line-tracking INI reader."""

import threading

from powernap import ini


def _within(seconds, func):
    """func() in a daemon thread, failing (not hanging) the test if it blocks."""
    box = []
    thread = threading.Thread(target=lambda: box.append(func()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert box, "blocked for more than %gs" % seconds
    return box[0]


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
        "bad.conf:7: section [ok] is repeated (first at bad.conf:2); give each section once per file",
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


def test_repeated_section_in_one_file_is_refused_naming_both_places():
    doc, errors = ini.parse_text("[powernap]\ngrace = 1\n\n[Powernap]\nsettle = 2\n", "a.conf")
    assert [str(e) for e in errors] == [
        "a.conf:4: section [powernap] is repeated (first at a.conf:1); give each section once per file"
    ]


def test_repeated_key_in_one_section_is_refused_naming_both_places():
    text = "[stage.1]\nafter = 10m\naction = powersave\nAfter: 20m\n[stage.2]\nafter = 1h\n"
    doc, errors = ini.parse_text(text, "a.conf")
    assert [str(e) for e in errors] == [
        "a.conf:4: option 'after' in [stage.1] is repeated (first at a.conf:2); give each option once per section"
    ]
    assert doc.get("stage.1").values["after"].text == "10m"  # the first one stays; the error refuses the file


def test_the_same_section_and_key_in_a_dropin_still_override(tmp_path):
    main = tmp_path / "powernap.conf"
    main.write_text("[powernap]\ngrace = 1\n")
    dropin = tmp_path / "10.conf"
    dropin.write_text("[powernap]\ngrace = 2\n")
    doc, errors = ini.read_files([str(main), str(dropin)])
    assert errors == [] and doc.get("powernap").values["grace"].text == "2"


def test_non_utf8_bytes_are_located_by_line(tmp_path):
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"[powernap]\nhostname = ok\n\n[monitor.x]\nregex = caf\xe9\n")
    _doc, errors = ini.read_files([str(path)])
    assert [str(e) for e in errors] == ["%s:5: not UTF-8 text: byte 0xe9 at column 12" % path]


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.conf"
    path.write_bytes(b"\xef\xbb\xbf[powernap]\ngrace = 5\nbad line\n")
    doc, errors = ini.read_files([str(path)])
    assert doc.get("powernap").texts() == {"grace": "5"}
    assert [str(e) for e in errors] == ["%s:3: expected 'key = value', got 'bad line'" % path]


def test_only_newlines_end_lines_so_numbers_match_the_editor():
    # Every character str.splitlines() also breaks at, one per line: none may shift later line numbers.
    odd = ["\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
    text = "[powernap]\n" + "".join("# page%s break\n" % ch for ch in odd) + "grace = 1\r\nsettle = 2\rbroken\n"
    doc, errors = ini.parse_text(text, "ff.conf")
    assert doc.get("powernap").values["grace"].line == 2 + len(odd)
    assert doc.get("powernap").values["settle"].line == 3 + len(odd)
    assert [str(e) for e in errors] == ["ff.conf:%d: expected 'key = value', got 'broken'" % (4 + len(odd))]


def test_form_feed_between_sections_is_whitespace():
    doc, errors = ini.parse_text("[powernap]\ngrace = 1\n\f\n[stage.1]\nafter = 2\n\fbad\n", "ff.conf")
    assert doc.get("stage.1").values["after"].line == 5
    assert [str(e) for e in errors] == ["ff.conf:6: expected 'key = value', got 'bad'"]


def test_a_fifo_or_directory_named_conf_is_refused_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "conf.d" / "50-fifo.conf"
    fifo.parent.mkdir()
    os.mkfifo(str(fifo))
    (tmp_path / "conf.d" / "60-dir.conf").mkdir()
    main = tmp_path / "powernap.conf"
    main.write_text("[powernap]\n")
    paths = ini.config_files(str(main))
    errors = _within(5.0, lambda: ini.read_files(paths)[1])  # old code blocked for ever in open()
    assert [str(e) for e in errors] == [
        "%s: cannot read: not a regular file (a FIFO)" % fifo,
        "%s: cannot read: not a regular file (a directory)" % (tmp_path / "conf.d" / "60-dir.conf"),
    ]


def test_an_oversized_file_is_refused(tmp_path):
    path = tmp_path / "big.conf"
    path.write_bytes(b"#" * (ini.MAX_FILE_SIZE + 1))
    _doc, errors = ini.read_files([str(path)])
    assert [str(e) for e in errors] == ["%s: cannot read: larger than %d bytes" % (path, ini.MAX_FILE_SIZE)]
