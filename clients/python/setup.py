"""Build hook: the gRPC stubs are generated from the proto while the package is built.

``pip install ./clients/python``, ``pip wheel`` and ``python -m build`` all run ``build_py``,
which generates ``syncline_client/_gen`` into the build directory (into the source tree for an
editable install) with the ``grpcio-tools`` that ``[build-system].requires`` brought. The
sdist carries a copy of the proto (see ``SdistWithProto``), so a wheel builds from it alone.

The runtime requirements are derived from that generator: its stubs refuse to load under an
older ``grpcio``, or a ``protobuf`` outside the range that ``grpcio-tools`` itself declares.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent


def _load_generator():
    # generate.py sits beside this file; the build backend does not put it on sys.path.
    spec = importlib.util.spec_from_file_location("_syncline_generate", HERE / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _load_generator()


def runtime_requirements() -> list[str]:
    """``grpcio`` at least the generator's version; ``protobuf`` in the generator's range;
    ``grpcio-status`` for the error details."""
    try:
        tools = importlib.metadata.version("grpcio-tools")
        protobuf = next(
            r
            for r in importlib.metadata.requires("grpcio-tools") or []
            if r.replace(" ", "").startswith(("protobuf<", "protobuf>", "protobuf="))
        )
    except (importlib.metadata.PackageNotFoundError, StopIteration):
        # Only the sdist step runs without grpcio-tools; its metadata is rebuilt with the wheel.
        return ["grpcio>=1.62", "protobuf>=4.25", "grpcio-status>=1.62"]
    # grpcio-status decodes the google.rpc error details (syncline_client.errors).
    return [f"grpcio>={tools}", protobuf.replace(" ", ""), f"grpcio-status>={tools}"]


class BuildPyWithStubs(build_py):
    """``build_py`` that also writes the generated stubs."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            out = generator.SOURCE_OUT
        else:
            out = Path(self.build_lib) / "syncline_client" / "_gen"
        generator.generate(out, generator.find_proto_root())


class SdistWithProto(sdist):
    """``sdist`` that puts the protos beside ``generate.py``, where the wheel build finds them."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        root = generator.find_proto_root()
        for name in generator.PROTO_FILES:
            target = Path(base_dir) / "proto" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / name, target)


setup(
    install_requires=runtime_requirements(),
    cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithProto},
)
