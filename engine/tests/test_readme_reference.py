"""The config references in engine/README.md are generated from the option tables: keep them in step.

Regenerate with: python3 tests/test_readme_reference.py --write   (run from engine/)
"""

import os
import sys

import pytest

from powernap.cli import schema_markdown
from powernap.config import schema
from powernap.server.config import schema as server_schema

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
# (heading, end marker, the option tables): the engine's, and powerwaked's.
REFERENCES = (
    ("## Reference (generated: `powernap schema --markdown`)\n\n", "<!-- end of generated reference -->\n", schema),
    (
        "### powerwaked options (generated: `python3 -m powernap.server.daemon --schema-markdown`)\n\n",
        "<!-- end of generated powerwaked reference -->\n",
        server_schema,
    ),
)


def _split(text, heading, end_marker):
    start = text.index(heading) + len(heading)
    end = text.index(end_marker, start)
    return text[:start], text[start:end], text[end:]


def _generated(tables):
    return schema_markdown(tables()).rstrip("\n") + "\n"


@pytest.mark.parametrize("heading, end_marker, tables", REFERENCES, ids=["engine", "powerwaked"])
def test_readme_reference_matches_the_option_tables(heading, end_marker, tables):
    with open(README, encoding="utf-8") as handle:
        _head, body, _tail = _split(handle.read(), heading, end_marker)
    assert body == _generated(tables), "engine/README.md reference is stale: run tests/test_readme_reference.py --write"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    for heading, end_marker, tables in REFERENCES:
        with open(README, encoding="utf-8") as handle:
            head, _body, tail = _split(handle.read(), heading, end_marker)
        with open(README, "w", encoding="utf-8") as handle:
            handle.write(head + _generated(tables) + tail)
