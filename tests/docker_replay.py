"""Replays a Dockerfile's final stage on the files it touches, as `docker build` would run it,
without a Docker engine (none runs here, and the base image could not be pulled).

What it keeps of a real build, because that is where images break for non-root users:
- COPY makes files owned by root:root, unless `--chown` says otherwise;
- each RUN runs as the stage's current USER (the base image's own user at first) in `sh -ec`;
- /tmp is sticky (mode 1777), so a user cannot delete another user's entries there.

What it does not: it runs no package manager. `pip` and `ckptlab` are stand-ins that read every
file named on their command line (as `pip install` does) and fail when one is missing or
unreadable. Absolute paths under /tmp, /data and /home are moved into a sandbox root; the
commands run there as the real uid and gid, so the kernel decides what is permitted.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# rayproject/ray images end with `USER ray`: uid 1000, primary group `users` (gid 100).
BASE_IMAGE_USER = (1000, 100)
USERS = {"0": (0, 0), "root": (0, 0), "1000": (1000, 100), "ray": (1000, 100)}
IDS = {"root": 0, "ray": 1000, "users": 100}  # the base image's /etc/passwd and /etc/group
SANDBOXED = ("/tmp", "/data", "/home")

PIP_STAND_IN = r"""#!/bin/sh
# pip install stand-in: read every file argument (a wheel's [extras] suffix stripped).
for arg in "$@"; do
  case "$arg" in
    -*|install) continue ;;
  esac
  path=${arg%%\[*}
  case "$path" in
    /*) cat "$path" > /dev/null || { echo "pip: cannot read $path" >&2; exit 1; } ;;
  esac
done
"""


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", text)
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), rest.strip()))
    return stages


@dataclass
class Replay:
    root: Path  # the sandbox's "/"
    steps: list[tuple[str, int, str]] = field(default_factory=list)  # (command, uid, output)

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")


def _sandboxed(command: str, root: Path) -> str:
    pattern = "|".join(re.escape(p) for p in SANDBOXED)
    return re.sub(rf"(?<![\w./$-])({pattern})(?=/|\s|$|\")", lambda m: f"{root}{m[1]}", command)


def _copy(replay: Replay, rest: str, context: Path, stage_outputs: Path) -> None:
    words = rest.split()
    flags = {w.split("=", 1)[0]: w.split("=", 1)[1] for w in words if w.startswith("--")}
    *sources, destination = [w for w in words if not w.startswith("--")]
    source_root = stage_outputs if "--from" in flags else context
    uid, gid = (IDS.get(x) if x in IDS else int(x) for x in flags.get("--chown", "0:0").split(":"))
    target = replay.path(destination)
    target.parent.mkdir(parents=True, exist_ok=True)
    for source in sources:
        origin = source_root / source.lstrip("/")
        if origin.is_dir():
            shutil.copytree(origin, target)
        else:
            shutil.copy2(origin, target)
        for path in [target, *target.rglob("*")] if target.is_dir() else [target]:
            os.chown(path, uid, gid)


def replay_final_stage(dockerfile_text: str, context: Path, wheel_name: str) -> Replay:
    """Runs the final stage's COPY/USER/WORKDIR/RUN steps in a fresh sandbox; raises
    AssertionError naming the step, its user and its output when a RUN fails."""
    *_, final = dockerfile_stages(dockerfile_text)
    # Under /tmp, not pytest's tmp_path: uid 1000 must be able to pass through every parent.
    root = Path(tempfile.mkdtemp(prefix="docker-replay-", dir="/tmp"))
    replay = Replay(root)
    try:
        stage_outputs, stand_ins = _lay_out(root, wheel_name)
        _run_steps(replay, final[1:], context, stage_outputs, stand_ins)
    except BaseException:
        shutil.rmtree(root)
        raise
    return replay


def _lay_out(root: Path, wheel_name: str) -> tuple[Path, Path]:
    """The base image's folders, the wheel stage's output and the stand-in commands."""
    root.chmod(0o755)  # like "/": every user may pass through
    (root / "tmp").mkdir(mode=0o777)
    (root / "tmp").chmod(0o777 | stat.S_ISVTX)  # the base image's sticky /tmp
    home = root / "home" / "ray"
    home.mkdir(parents=True)
    os.chown(home, *BASE_IMAGE_USER)
    # What the wheel stage leaves for COPY --from: /dist/<the wheel>.
    stage_outputs = root / ".stage-outputs"
    (stage_outputs / "dist").mkdir(parents=True)
    (stage_outputs / "dist" / wheel_name).write_bytes(b"PK\x05\x06" + b"\0" * 18)
    stand_ins = root / ".bin"
    stand_ins.mkdir()
    (stand_ins / "pip").write_text(PIP_STAND_IN)
    (stand_ins / "ckptlab").write_text("#!/bin/sh\nexit 0\n")
    for script in stand_ins.iterdir():
        script.chmod(0o755)

    return stage_outputs, stand_ins


def _run_steps(
    replay: Replay,
    steps: list[tuple[str, str]],
    context: Path,
    stage_outputs: Path,
    stand_ins: Path,
) -> None:
    root, home = replay.root, replay.path("/home/ray")
    uid, gid = BASE_IMAGE_USER
    workdir = home
    for instruction, rest in steps:
        if instruction == "USER":
            uid, gid = USERS[rest]
        elif instruction == "WORKDIR":
            workdir = replay.path(rest)
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction == "COPY":
            _copy(replay, rest, context, stage_outputs)
        elif instruction == "RUN":
            command = _sandboxed(rest, root)
            done = subprocess.run(
                ["sh", "-ec", command],
                user=uid,
                group=gid,
                extra_groups=[],
                cwd=workdir,
                env={"PATH": f"{stand_ins}:/usr/bin:/bin", "HOME": str(home)},
                capture_output=True,
                text=True,
                timeout=60,
            )
            output = done.stdout + done.stderr
            assert done.returncode == 0, f"RUN {rest}\n  as uid {uid}: {output.strip()}"
            replay.steps.append((rest, uid, output))
