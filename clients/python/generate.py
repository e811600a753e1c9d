#!/usr/bin/env python3
"""Generates the gRPC stubs for ``syncline.v1`` (the build hook's code, and a developer tool).

``pip install`` and ``python -m build`` run :func:`generate` from ``setup.py`` (its
``build_py`` step), so users never call this file. Run it by hand only to use the package
straight from the source tree without installing it (needs ``grpcio-tools``)::

    python clients/python/generate.py      # writes clients/python/syncline_client/_gen/

It runs ``grpc_tools.protoc`` (``--python_out``, ``--grpc_python_out``, ``--pyi_out``) on
``syncline/v1/replication.proto`` and ``syncline/v1/attachments.proto``, then makes the output a package (``_gen/syncline/v1``) and
rewrites the generated absolute import ``from syncline.v1 import`` into a relative one, so the
stubs import as ``syncline_client._gen.syncline.v1`` without touching ``sys.path``.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_FILE = "syncline/v1/replication.proto"
#: Every proto the package carries stubs for (the first is the one looked for).
PROTO_FILES = (PROTO_FILE, "syncline/v1/attachments.proto")
#: Where the protos are looked for: copies beside this file (an sdist carries them), then the
#: repository's own ``proto/`` (building from a clone).
PROTO_ROOTS = (HERE / "proto", HERE.parent.parent / "proto")
SOURCE_OUT = HERE / "syncline_client" / "_gen"

# `from syncline.v1 import replication_pb2 as ...` -> `from . import replication_pb2 as ...`
_ABSOLUTE_IMPORT = re.compile(r"^from syncline\.v1 import ", re.MULTILINE)


def find_proto_root() -> Path:
    """The first of :data:`PROTO_ROOTS` holding every proto; raises ``FileNotFoundError``."""
    for root in PROTO_ROOTS:
        if all((root / name).is_file() for name in PROTO_FILES):
            return root
    tried = ", ".join(str(root) for root in PROTO_ROOTS)
    raise FileNotFoundError(
        f"syncline-client: {', '.join(PROTO_FILES)} not found together (looked in {tried})"
    )


def generate(out: Path, proto_root: Path) -> None:
    """Writes the stubs for ``proto_root``'s :data:`PROTO_FILES` as the package ``out``
    (replaced)."""
    # Imported here so that the sdist step (which only copies the proto) needs no grpc_tools.
    import grpc_tools
    from grpc_tools import protoc

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    # The well-known types (google/protobuf/timestamp.proto) ship inside grpc_tools.
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--pyi_out={out}",
            *(str(proto_root / name) for name in PROTO_FILES),
        ]
    )
    if status != 0:
        raise RuntimeError(f"syncline-client: protoc failed on {', '.join(PROTO_FILES)}")
    package = out / "syncline" / "v1"
    for folder in (out, out / "syncline", package):
        (folder / "__init__.py").write_text('"""Generated from the proto at build time; do not edit."""\n')
    for path in package.glob("*.py*"):
        text = path.read_text()
        fixed = _ABSOLUTE_IMPORT.sub("from . import ", text)
        if fixed != text:
            path.write_text(fixed)


def main() -> int:
    try:
        generate(SOURCE_OUT, find_proto_root())
    except ImportError:
        print("generate.py: grpcio-tools is missing (pip install grpcio-tools)", file=sys.stderr)
        return 1
    except (FileNotFoundError, RuntimeError) as err:
        print(f"generate.py: {err}", file=sys.stderr)
        return 1
    print(f"generated stubs in {SOURCE_OUT.relative_to(HERE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
