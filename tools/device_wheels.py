"""Downloads the wheels a lent GPU machine needs to run `tools/device_run.sh`, into .whl/ (git ignores it).

    make device-wheels          # here, where PyPI is reachable; then carry .whl to the device machine

The device machine has no internet and its own Python (3.12) with PyTorch, torchvision, numpy, OpenCV and pandas,
but not SAM 2, dtlpy or pycocotools. This takes what requirements.txt pins and what they need, at the versions
installed in .venv, leaves out the packages the device image already holds (`ON_THE_DEVICE`), and fetches each as
a Python 3.12 x86-64 wheel; a package published only as source is built into a wheel here (they are pure Python).
`device_run.sh` unpacks them onto PYTHONPATH there.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
# What the device image already holds (KINDS.md of the device tool lists it) and our requirements also pull in:
# left out, so the image's own builds stay (its torch is a CUDA build) and the wheels stay small.
ON_THE_DEVICE = {
    "torch", "torchvision", "triton", "numpy", "pandas", "pillow", "opencv-python-headless", "scipy", "sympy",
    "mpmath", "networkx", "jinja2", "markupsafe", "fsspec", "filelock", "setuptools", "typing-extensions", "pytest",
    "pluggy", "iniconfig", "packaging", "python-dateutil", "six", "pyyaml", "tqdm", "requests", "urllib3", "idna",
    "certifi", "charset-normalizer", "matplotlib", "seaborn", "contourpy", "fonttools", "kiwisolver", "cycler",
    "pyparsing", "pygments", "tabulate", "attrs", "aiohttp", "aiosignal", "aiohappyeyeballs", "frozenlist",
    "multidict", "propcache", "yarl", "portalocker", "pathspec", "tzdata",
}
ON_THE_DEVICE_PREFIXES = ("nvidia-", "cuda-")  # torch's CUDA libraries


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str]) -> dict[str, str]:
    """Installed name -> version of `roots` and everything they require (extras left out)."""
    found, todo = {}, list(roots)
    while todo:
        name = canonical(todo.pop())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[name] = dist.version
        todo += [re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0] for req in dist.requires or [] if "extra ==" not in req]
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / ".whl")
    parser.add_argument("--python-version", default="3.12")
    args = parser.parse_args(argv)
    roots = [re.split(r"[ ;<>=!~\[]", line.strip(), maxsplit=1)[0]
             for line in (REPO / "requirements.txt").read_text().splitlines() if line.strip() and line[0] != "#"]
    wanted = {name: version for name, version in closure(roots).items()
              if name not in ON_THE_DEVICE and not name.startswith(ON_THE_DEVICE_PREFIXES)}
    args.out.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    for name, version in sorted(wanted.items()):
        binary = pip + ["download", "--quiet", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
                        "--python-version", args.python_version, "--dest", str(args.out)]
        binary += [arg for platform in PLATFORMS for arg in ("--platform", platform)]
        if subprocess.run(binary + [f"{name}=={version}"], capture_output=True).returncode == 0:
            continue
        built = subprocess.run(pip + ["wheel", "--quiet", "--no-deps", "--wheel-dir", str(args.out),
                                      f"{name}=={version}"], capture_output=True, text=True)
        if built.returncode != 0:
            print(f"error: no wheel for {name}=={version}:\n{built.stderr[-2000:]}", file=sys.stderr)
            return 1
    size = sum(p.stat().st_size for p in args.out.glob("*.whl"))
    print(f"{len(wanted)} packages in {args.out} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
