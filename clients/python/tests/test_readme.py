"""The README's example runs against the real server (the test server's address; the example
makes its own ids, so it runs on a shared database). scripts/test-python.sh also runs it
verbatim, from a fresh venv, against the development configuration."""

from __future__ import annotations

import re
from pathlib import Path

from support import call_within

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_runs(addr: str) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert blocks, "README.md has no python example"
    code = blocks[0].replace("127.0.0.1:50051", addr)
    compiled = compile(code, str(README), "exec")
    call_within(lambda: exec(compiled, {"__name__": "readme_example"}), timeout=30)
