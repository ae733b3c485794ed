"""The README and docs/: short enough to read, and every relative link lands on a file."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", ROOT / "research" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_readme_fits_ten_minutes_and_keeps_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 12_000
    assert "python3 scripts/bootstrap.py repro" in readme and "python3 scripts/bootstrap.py test" in readme


def test_every_relative_link_and_image_points_at_a_file():
    broken = []
    for document in DOCUMENTS:
        for target in LINK.findall(document.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (document.parent / target.split("#")[0]).exists():
                broken.append(f"{document.relative_to(ROOT)}: {target}")
    assert not broken
