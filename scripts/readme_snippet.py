#!/usr/bin/env python3
"""Prints the fenced code block that follows a ``<!-- ci: NAME ... -->`` marker in a Markdown file.

Usage: ``scripts/readme_snippet.py README.md python-quickstart > snippet.py``

CI runs README snippets verbatim through this, so the documentation cannot drift from the
product. Exits 1, naming the file and marker, when the marker or its block is missing.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def snippet(text: str, name: str) -> str:
    """The body of the first fenced block after the marker ``<!-- ci: name``."""
    marker = re.search(r"<!--\s*ci:\s*" + re.escape(name) + r"\b[^>]*-->", text)
    if marker is None:
        raise LookupError(f"no '<!-- ci: {name} -->' marker")
    block = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE).search(text, marker.end())
    if block is None:
        raise LookupError(f"no fenced code block after the '{name}' marker")
    return block.group(1)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    path, name = Path(argv[1]), argv[2]
    try:
        sys.stdout.write(snippet(path.read_text(), name))
    except (OSError, LookupError) as err:
        print(f"readme_snippet.py: {path}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
