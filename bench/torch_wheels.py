"""What `pip install torch==<pinned>` downloads on a fresh Linux x86_64 machine with Python
3.11, from PyPI alone: pip resolves it without installing (--dry-run --report, no local wheel
folders or constraints), then each wheel's size comes from PyPI's JSON simple API.
Needs PyPI; not part of `make benchmarks`.

    python bench/torch_wheels.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(5, 29)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]


def pinned_torch() -> str:
    for line in (REPO / "constraints" / "pinned.txt").read_text().splitlines():
        if line.startswith("torch=="):
            return line.strip()
    raise SystemExit("no torch== in constraints/pinned.txt")


def wheel_size(name: str, filename: str) -> int:
    request = urllib.request.Request(
        f"https://pypi.org/simple/{name}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    return next(f["size"] for f in files if f["filename"] == filename)


def main() -> None:
    requirement = pinned_torch()
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--isolated", "--quiet", "--dry-run",
             "--ignore-installed", "--only-binary=:all:", *platforms, "--python-version", "3.11",
             "--target", str(Path(folder) / "t"), "--report", str(report), requirement],
            check=True,
            env={"PATH": "/usr/bin:/bin", "PIP_CONFIG_FILE": "/dev/null", "HOME": folder},
        )  # fmt: skip
        wheels = json.loads(report.read_text())["install"]
    sizes = []
    for wheel in wheels:
        filename = urllib.parse.unquote(wheel["download_info"]["url"].rsplit("/", 1)[1])
        sizes.append((wheel_size(wheel["metadata"]["name"], filename), filename))
    print(f"{requirement}, Linux x86_64, CPython 3.11, from PyPI:")
    for size, filename in sorted(sizes, reverse=True)[:6]:
        print(f"  {size / 1e6:7.0f} MB  {filename}")
    total = sum(size for size, _ in sizes)
    print(f"  {len(sizes)} wheels, {total / 1e9:.2f} GB to download")


if __name__ == "__main__":
    main()
