"""Build hooks of assent-client: the gRPC stubs are generated from the service's own proto files.

The protos are read from ``proto/`` inside this directory when present (an sdist carries a copy)
and otherwise from the repository's ``../../proto``. ``grpc_tools.protoc`` writes
``--python_out``, ``--grpc_python_out`` and ``--pyi_out`` into a scratch directory; the modules
are then moved into ``assent_client/_proto/`` with their ``from assent.v1 import ...`` lines
rewritten, so that no top-level ``assent`` package is installed.

The runtime requirements follow the generator: the generated code refuses to run on a grpcio
older than the grpcio-tools that wrote it, and on a protobuf older than its protoc. grpcio-status
and googleapis-common-protos come along for the error details.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PACKAGE = "assent_client"
GENERATED = "_proto"


def proto_root() -> Path:
    """Where the ``assent/v1/*.proto`` files are: a copy beside this file, else the repo's."""
    for candidate in (HERE / "proto", HERE.parent.parent / "proto"):
        if (candidate / "assent" / "v1").is_dir():
            return candidate
    raise SystemExit(
        "assent-client: no proto files found (looked for proto/assent/v1 beside setup.py "
        "and in ../../proto)"
    )


def generate(destination: Path) -> None:
    """Compiles every ``assent/v1/*.proto`` into ``destination`` (the ``_proto`` package)."""
    from grpc_tools import protoc

    try:
        from importlib.resources import files

        well_known = str(files("grpc_tools") / "_proto")
    except (ImportError, TypeError):  # pragma: no cover - very old importlib
        import pkg_resources

        well_known = pkg_resources.resource_filename("grpc_tools", "_proto")
    root = proto_root()
    protos = sorted(str(path.relative_to(root)) for path in (root / "assent" / "v1").glob("*.proto"))
    with tempfile.TemporaryDirectory() as scratch:
        arguments = [
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{well_known}",
            f"--python_out={scratch}",
            f"--grpc_python_out={scratch}",
            f"--pyi_out={scratch}",
            *protos,
        ]
        if protoc.main(arguments) != 0:
            raise SystemExit(f"assent-client: protoc failed on {root}")
        if destination.exists():
            shutil.rmtree(destination)
        destination.mkdir(parents=True)
        for generated in sorted((Path(scratch) / "assent" / "v1").iterdir()):
            text = generated.read_text(encoding="utf-8")
            text = re.sub(
                r"^from assent\.v1 import ",
                f"from {PACKAGE}.{GENERATED} import ",
                text,
                flags=re.MULTILINE,
            )
            text = re.sub(r"'assent\.v1\.(\w+_pb2)'", rf"'{PACKAGE}.{GENERATED}.\1'", text)
            (destination / generated.name).write_text(text, encoding="utf-8")
        (destination / "__init__.py").write_text(
            '"""Generated from proto/assent/v1 at build time (setup.py). Do not edit."""\n',
            encoding="utf-8",
        )


class BuildWithStubs(build_py):
    """build_py that generates the stubs first: into the build tree, or the source tree for an
    editable install (which imports from ``src/``)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            target = HERE / "src" / PACKAGE / GENERATED
        else:
            target = Path(self.build_lib) / PACKAGE / GENERATED
        generate(target)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        generated = Path(self.build_lib) / PACKAGE / GENERATED
        if generated.is_dir():
            outputs.extend(str(path) for path in generated.iterdir() if path.is_file())
        return outputs


class SdistWithProtos(sdist):
    """An sdist carries a copy of the protos, as it cannot reach ``../../proto``."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        copy = Path(base_dir) / "proto"
        if copy.exists():
            shutil.rmtree(copy)
        shutil.copytree(proto_root(), copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))


def requirement_of(distribution: str, name: str) -> str | None:
    """The requirement ``distribution`` declares on ``name`` (e.g. ``protobuf<8,>=7.35.1``)."""
    for requirement in metadata.requires(distribution) or []:
        match = re.match(rf"^\s*{re.escape(name)}\s*([^;]*)", requirement, re.IGNORECASE)
        if match:
            return f"{name}{match.group(1).strip()}"
    return None


#: For the standard error details (assent_client.errors): grpcio-status reads the
#: ``google.rpc.Status`` of a call's trailer, googleapis-common-protos has its messages. Each of
#: their releases names the protobuf it works with; pip picks one that works with the protobuf
#: required below.
ERROR_DETAILS = ["grpcio-status>=1.66", "googleapis-common-protos>=1.63"]


def runtime_requirements() -> list[str]:
    """grpcio at least the generator's version; protobuf as the generator itself requires; the
    packages that decode the error details."""
    try:
        tools = metadata.version("grpcio-tools")
    except metadata.PackageNotFoundError:
        # Metadata only (no stubs to build): the floor the generated code has always needed.
        return ["grpcio>=1.66", "protobuf>=5.26.1", *ERROR_DETAILS]
    protobuf = requirement_of("grpcio-tools", "protobuf") or "protobuf"
    return [f"grpcio>={tools}", protobuf, *ERROR_DETAILS]


setup(
    install_requires=runtime_requirements(),
    cmdclass={"build_py": BuildWithStubs, "sdist": SdistWithProtos},
)
