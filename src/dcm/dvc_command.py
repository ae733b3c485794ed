"""Running DVC from dcm: the same environment, and failures as exceptions that say what failed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dcm.errors import DcmError


class GridError(DcmError, RuntimeError):
    """A DVC command, or some experiments of a grid, failed (or never ran)."""


def dvc(*args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run DVC from this environment; its queue workers find ``dvc`` and ``python`` on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["dvc", *args], capture_output=True, text=True, cwd=cwd, env=env)
    if check and result.returncode != 0:
        raise GridError(f"`dvc {' '.join(args)}` failed:\n{result.stdout}\n{result.stderr}")
    return result
