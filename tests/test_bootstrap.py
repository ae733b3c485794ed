"""The setup script installs the tested versions, except where the machine's own pip constraints forbid one."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("bootstrap", ROOT / "scripts" / "bootstrap.py")
bootstrap = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bootstrap)


def test_a_machine_pin_that_excludes_ours_wins_and_compatible_ones_keep_ours(tmp_path, monkeypatch):
    machine = tmp_path / "machine-constraints.txt"
    machine.write_text("# the machine's own\nimageio==2.38.1\ntorch<=99\n")
    monkeypatch.setenv("PIP_CONSTRAINT", str(machine))
    ours = (ROOT / "constraints.txt").read_text().splitlines()
    assert "imageio==2.38.2" in ours and any(line.startswith("torch==") for line in ours)

    kept = bootstrap.tested_pins_compatible_with_machine().splitlines()

    assert "imageio==2.38.2" not in kept
    assert set(ours) - set(kept) == {"imageio==2.38.2"}


def test_the_tested_set_pins_each_package_once():
    """Two pins of one package (names compare case- and separator-insensitively) make pip refuse the
    whole tested set, and bootstrap then installs untested versions."""
    names = [bootstrap.canonical(r.name) for line in (ROOT / "constraints.txt").read_text().splitlines()
             if (r := bootstrap.parse_requirement(line)) is not None]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
