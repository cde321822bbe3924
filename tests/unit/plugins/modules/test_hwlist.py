# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
import pytest

from ansible_collections.powernap.fleet.plugins.modules import hwlist

EXISTING = """# a hand-written list
[allow.workstations]
sys_vendor = Dell*
actions = suspend
reason = tested

[deny.old]
kernel = <5.10
actions = suspend
reason = resume broken
"""

X200 = {
    "name": "x200",
    "verdict": "deny",
    "match": {"sys_vendor": "LENOVO", "product_name": ["7459*", "7458*"]},
    "actions": ["suspend", "hybrid-sleep"],
    "tweaks": None,
    "reason": "resume  hangs\n(BIOS 3.22)",
}


def test_parse_sections_keeps_order_and_continuations():
    sections = hwlist.parse_sections("[deny.a]\npci = 10de:*\n  8086:15b8\nreason = r\n")
    assert sections == [("deny.a", [("pci", "10de:*, 8086:15b8"), ("reason", "r")])]


def test_present_adds_and_keeps_other_entries():
    text = hwlist.plan(EXISTING, [X200], "present", False)
    names = [name for name, _values in hwlist.parse_sections(text)]
    assert names == ["allow.workstations", "deny.old", "deny.x200"]
    assert "product_name = 7459*, 7458*\n" in text
    assert "actions      = suspend, hybrid-sleep\n" in text
    assert "reason       = resume hangs (BIOS 3.22)\n" in text


def test_present_updates_in_place_and_exclusive_drops_the_rest():
    changed = dict(X200, name="old", match={"kernel": "<5.15"})
    text = hwlist.plan(EXISTING, [changed], "present", True)
    assert [n for n, _v in hwlist.parse_sections(text)] == ["deny.old"]
    assert "kernel  = <5.15" in text


def test_absent_removes_entries_or_the_file():
    text = hwlist.plan(EXISTING, [{"name": "old", "verdict": "deny"}], "absent", False)
    assert [n for n, _v in hwlist.parse_sections(text)] == ["allow.workstations"]
    assert hwlist.plan(EXISTING, [], "absent", False, remove_list=True) is None


def test_absent_without_entries_needs_remove_list():
    # An empty entries list (say, an unset variable) must never delete the whole file.
    with pytest.raises(ValueError, match="remove_list=true"):
        hwlist.plan(EXISTING, [], "absent", False)
    with pytest.raises(ValueError, match="state=absent and no entries"):
        hwlist.plan(EXISTING, [X200], "absent", False, remove_list=True)
    with pytest.raises(ValueError, match="state=absent and no entries"):
        hwlist.plan(EXISTING, [X200], "present", False, remove_list=True)


def test_same_entries_render_identically():
    first = hwlist.plan("", [X200], "present", False)
    assert hwlist.plan(first, [X200], "present", False) == first


@pytest.mark.parametrize(
    "change, message",
    [
        ({"match": {"vendor": "x"}}, "unknown match key(s) vendor"),
        ({"reason": ""}, "a reason is required"),
        ({"actions": None}, "give actions and/or tweaks"),
        ({"name": "a]b"}, "not usable as a section name"),
    ],
)
def test_bad_entries_are_refused_before_the_engine_sees_them(change, message):
    with pytest.raises(ValueError) as info:
        hwlist.plan("", [dict(X200, **change)], "present", False)
    assert message in str(info.value)
