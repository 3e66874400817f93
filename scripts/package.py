"""`make package`: build the deployment artifacts (the shared layer and each function's code).

    python scripts/package.py [--out build]

Writes, under ``--out`` (default ``build/``; only these paths are replaced):

``layer/python/``
    the Lambda layer (mounted at ``/opt/python``): the ``bhiv`` package from ``src/bhiv`` (with its
    YAML files), ``contracts/`` copied to ``bhiv/_contracts`` (``bhiv.contracts.contracts_dir``
    looks there), and the runtime dependencies installed with pip *for the Lambda platform*
    (``manylinux2014_x86_64``, CPython 3.11, wheels only) at the exact versions pinned in uv.lock.
``functions/<name>/``
    each function's code directory (``functions/bucket``, ``functions/karma``,
    ``functions/executor``: ``app.py``), which becomes the function's ``/var/task``.
``layer-requirements.txt``
    the pinned list the layer was installed from (for review; not part of the layer).

What the layer leaves out of ``[project.dependencies]``, and why:

* ``moto`` (with its ``server`` extra: flask, werkzeug, cryptography, docker, openapi-spec-validator,
  ...) is the local stack's AWS; nothing a handler imports needs it. Pruned with its subtree
  (``uv export --prune moto``), so dependencies only moto needs go too.
* ``chalice``'s own dependencies (click, pip, setuptools, wheel, inquirer, ...) serve its CLI and
  deployer. A Chalice app at runtime needs only ``chalice/__init__.py`` and ``chalice/app.py``
  (stdlib only), which is also all Chalice's own packager ships; chalice is installed without
  dependencies and trimmed to those two files.

boto3/botocore are provided by the Lambda runtime, but the layer pins the locked versions anyway:
``/opt/python`` comes before the runtime's ``/var/runtime`` on ``sys.path``, so the deployed code
runs with exactly the SDK the tests ran with.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ("bucket", "karma", "executor")
PLATFORM = ("--platform", "manylinux2014_x86_64", "--implementation", "cp", "--python-version", "3.11")
PRUNED = ("moto", "chalice")  # with their subtrees; chalice itself comes back without dependencies
CHALICE_RUNTIME = ("__init__.py", "app.py")
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024  # function code + all layers, unzipped
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")


def _uv() -> list[str]:
    found = shutil.which("uv")
    if found:
        return [found]
    for python in (sys.executable, shutil.which("python3") or "python3"):
        probe = subprocess.run([python, "-m", "uv", "--version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [python, "-m", "uv"]
    raise SystemExit("uv not found (on PATH or as `python3 -m uv`): run `make install` first")


def _export(*extra: str) -> list[str]:
    """Pinned requirement lines from uv.lock (runtime dependencies only, no hashes)."""
    cmd = [*_uv(), "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes", "--no-header", *extra]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def layer_requirements() -> list[str]:
    """The locked runtime dependencies minus moto (and chalice's CLI dependencies), pinned."""
    pins = _export(*(arg for name in PRUNED for arg in ("--prune", name)))
    chalice = [line for line in _export() if line.split("==")[0].strip().lower() == "chalice"]
    if len(chalice) != 1:
        raise SystemExit("chalice is not pinned in uv.lock")
    names = {line.split("==")[0].split(";")[0].strip().lower() for line in pins}
    leaked = names & {"moto", "flask", "werkzeug", "docker", "cryptography"}
    if leaked:
        raise SystemExit(f"server-only packages would go into the layer: {sorted(leaked)}")
    return [*pins, chalice[0]]


def _pip_install(requirements: Path, target: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",
        "--no-deps",  # the list is the complete locked closure: nothing else may come in
        *PLATFORM,
        "--only-binary=:all:",
        "--target",
        str(target),
        "-r",
        str(requirements),
    ]
    subprocess.run(cmd, check=True)


def _trim(site: Path) -> None:
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts: not callable in Lambda
    chalice = site / "chalice"
    for child in chalice.iterdir():
        if child.name not in CHALICE_RUNTIME:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    for cache in list(site.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB" if size >= 1024 * 1024 else f"{size / 1024:.1f} KB"


def build(out: Path) -> dict[str, int]:
    """Build the layer and the function directories under `out`; returns sizes in bytes."""
    out.mkdir(parents=True, exist_ok=True)
    layer = out / "layer"
    functions = out / "functions"
    for old in (layer, functions):
        shutil.rmtree(old, ignore_errors=True)
    site = layer / "python"
    site.mkdir(parents=True)

    shutil.copytree(ROOT / "src" / "bhiv", site / "bhiv", ignore=_IGNORE)
    shutil.copytree(ROOT / "contracts", site / "bhiv" / "_contracts", ignore=_IGNORE)

    requirements = out / "layer-requirements.txt"
    requirements.write_text("\n".join(layer_requirements()) + "\n", encoding="utf-8")
    _pip_install(requirements, site)
    _trim(site)

    for name in FUNCTIONS:
        shutil.copytree(ROOT / "functions" / name, functions / name, ignore=_IGNORE)

    sizes = {"layer": _size(layer)}
    sizes.update({f"functions/{name}": _size(functions / name) for name in FUNCTIONS})
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build", help="output directory (default: build/)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    sizes = build(args.out.resolve())
    site = args.out.resolve() / "layer" / "python"
    top = sorted(((_size(p), p.name) for p in site.iterdir() if p.is_dir()), reverse=True)[:8]
    print(f"built in {time.monotonic() - started:.1f}s under {args.out}")
    for name, size in sizes.items():
        print(f"  {name:<20} {_mb(size):>9}")
    print("  largest in the layer: " + ", ".join(f"{name} {_mb(size)}" for size, name in top))
    biggest = sizes["layer"] + max(size for name, size in sizes.items() if name != "layer")
    if biggest > LAMBDA_UNZIPPED_LIMIT:
        print(f"layer + function code is {_mb(biggest)}: above Lambda's 250 MB unzipped limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
