"""The config reference in engine/README.md is generated from the option tables: keep it in step.

Regenerate with: python3 tests/test_readme_reference.py --write   (run from engine/)
"""

import os
import sys

from powernap.cli import schema_markdown
from powernap.config import schema

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
HEADING = "## Reference (generated: `powernap schema --markdown`)\n\n"
END = "<!-- end of generated reference -->\n"


def _split(text):
    start = text.index(HEADING) + len(HEADING)
    end = text.index(END, start)
    return text[:start], text[start:end], text[end:]


def _generated():
    return schema_markdown(schema()).rstrip("\n") + "\n"


def test_readme_reference_matches_the_option_tables():
    with open(README, encoding="utf-8") as handle:
        _head, body, _tail = _split(handle.read())
    assert body == _generated(), "engine/README.md reference is stale: run tests/test_readme_reference.py --write"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    with open(README, encoding="utf-8") as handle:
        head, _body, tail = _split(handle.read())
    with open(README, "w", encoding="utf-8") as handle:
        handle.write(head + _generated() + tail)
