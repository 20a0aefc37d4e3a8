"""Build the executors' Python environment as one archive (``make dist``): a venv packed with venv-pack.

    python infra/dist/build_env.py --out dist/stlake-env.tar.gz      # what `make dist` runs
    spark-submit --conf spark.archives=dist/stlake-env.tar.gz#env --conf spark.pyspark.python=./env/bin/python ...

Why a venv-pack archive and not a wheel set: Spark itself ships an archive named in ``spark.archives``
to every executor and unpacks it in the executor's working dir, so the nodes need no pip, no network and
no build tools at job start, and every executor runs exactly the same files; a wheel set would have to be
installed on each node by something outside Spark. It is the layout Spark's "Python Package Management"
guide and EMR Serverless document.

What goes in: stlake (installed, not editable) and the closure of its ``install_requires`` at exactly
the versions of the environment running this script (the dev venv: the pins that were tested), minus
pyspark and py4j (the cluster's Spark puts its own PySpark on the executors' ``PYTHONPATH``, and it must
match the JVM) and minus everything the executors never import (matplotlib, which only `stlake qc` uses on
the driver; torch, petastorm, jupyter, test tools).
Test suites inside packages are removed. The pins are written next to the archive
(``dist/stlake-env.requirements.txt``; ``--requirements-only`` just prints them), so that another build
(``make dist-emr`` in Amazon Linux) installs exactly the same versions.

The venv's ``bin/python`` links to the interpreter it was made from (``--python``), so the archive runs
on nodes that have that interpreter at the same path (a test cluster on this machine, nodes of one
image). ``--portable`` copies the interpreter and its standard library into the venv instead, for nodes
without it (EMR Serverless: build it in the Amazon Linux container of ``infra/terraform/env/Dockerfile``).
"""
from __future__ import annotations

import argparse
import glob
import importlib.metadata as metadata
import os
import shutil
import subprocess
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Provided by the cluster's Spark installation (pyspark, py4j), or used on the driver only (matplotlib:
#: `stlake qc`): never shipped.
PROVIDED = {"pyspark", "py4j", "matplotlib"}
#: Folders of installed packages the executors never import.
PRUNED = ("*/tests", "*/*/tests", "pyarrow/include", "pyarrow/src", "numpy/_core/include",
          "numpy/core/include")


def pinned_closure(package: str = "stlake") -> list[str]:
    """``name==version`` of every distribution ``package`` needs (no extras), as installed here, sorted."""
    seen: dict[str, str] = {}
    todo = [Requirement(r) for r in metadata.requires(package) or []]
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen or name in PROVIDED:
            continue
        seen[name] = metadata.version(requirement.name)
        todo += [Requirement(r) for r in metadata.requires(requirement.name) or []]
    return sorted(f"{name}=={version}" for name, version in seen.items())


def run(*command: str) -> None:
    """Run a command, its output shown; CalledProcessError when it fails."""
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def make_venv(python: str, prefix: str, portable: bool) -> str:
    """A fresh venv at ``prefix`` from ``python``; ``portable`` copies the interpreter and its stdlib in."""
    shutil.rmtree(prefix, ignore_errors=True)
    run(python, "-m", "venv", *(["--copies"] if portable else []), prefix)
    env_python = os.path.join(prefix, "bin", "python")
    if portable:
        stdlib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
                                check=True, capture_output=True, text=True).stdout.strip()
        target = os.path.join(prefix, "lib", os.path.basename(stdlib))
        shutil.copytree(stdlib, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("site-packages"))
    return env_python


def site_packages(env_python: str) -> str:
    """The venv's site-packages folder."""
    return subprocess.run([env_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()


def prune(site: str) -> int:
    """Delete test suites and C headers from ``site``; the bytes freed."""
    freed = 0
    for pattern in PRUNED:
        for folder in glob.glob(os.path.join(site, pattern)):
            if os.path.isdir(folder):
                freed += sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)
                shutil.rmtree(folder)
    return freed


def check(env_python: str) -> None:
    """The env imports stlake's executor-side modules by itself (no PYTHONPATH, no user site)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    code = ("import stlake.ingestion.units, stlake.lake.tables, deltalake, cv2, pyarrow, h5py, scipy, "
            "tifffile, imagecodecs, yaml; print('executor env ok:', stlake.__file__)")
    subprocess.run([env_python, "-s", "-c", code], check=True, env=clean, cwd="/")


def build(out: str, work: str, python: str, portable: bool, requirements: str | None) -> None:
    """Build the venv at ``work``, install stlake and its pins, prune it, check it, pack it to ``out``."""
    import venv_pack

    pins = open(requirements).read().split() if requirements else pinned_closure()
    env_python = make_venv(python, work, portable)
    pins_file = os.path.join(work, "stlake-requirements.txt")
    with open(pins_file, "w") as handle:
        handle.write("\n".join(pins) + "\n")
    run(env_python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "-r", pins_file)
    run(env_python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", ROOT)
    freed = prune(site_packages(env_python))
    check(env_python)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    shutil.copyfile(pins_file, requirements_path(out))
    venv_pack.pack(prefix=work, output=out, force=True, compress_level=4)
    print(f"{out}: {os.path.getsize(out) / 2**20:.0f} MiB ({len(pins)} pinned distributions + stlake; "
          f"{freed / 2**20:.0f} MiB of tests and headers pruned)")


def requirements_path(out: str) -> str:
    """Where the pins of archive ``out`` go: ``dist/stlake-env.tar.gz`` -> ``dist/stlake-env.requirements.txt``."""
    return out.removesuffix(".tar.gz") + ".requirements.txt"


def main(argv: list[str] | None = None) -> int:
    """``build_env.py [--out F] [--work D] [--python P] [--portable] [--requirements R | --requirements-only]``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "dist", "stlake-env.tar.gz"))
    parser.add_argument("--work", default=os.path.join(ROOT, "build", "executor-env"),
                        help="where the venv is built before packing")
    parser.add_argument("--python", default=getattr(sys, "_base_executable", sys.executable),
                        help="the interpreter the executors run (default: this venv's base interpreter)")
    parser.add_argument("--portable", action="store_true", help="copy the interpreter and stdlib into the env")
    parser.add_argument("--requirements", help="pins to install instead of this environment's (one per line)")
    parser.add_argument("--requirements-only", action="store_true", help="print the pins and stop")
    args = parser.parse_args(argv)
    if args.requirements_only:
        print("\n".join(pinned_closure()))
        return 0
    build(args.out, os.path.abspath(args.work), args.python, args.portable, args.requirements)
    return 0


if __name__ == "__main__":
    sys.exit(main())
