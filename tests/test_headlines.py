"""The README is a map: its headline block is what benchmarks/headlines.py makes of the
committed reports (so a changed report with a stale README fails here), it stays short, and
every relative link in the repository's Markdown resolves inside the repository."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import headlines  # noqa: E402


def test_readme_headlines_are_generated_from_the_reports():
    text = (ROOT / "README.md").read_text()
    assert headlines.replace(text, headlines.block()) == text, \
        "README.md's headline block is stale: run python benchmarks/headlines.py"


def test_a_changed_report_makes_the_block_stale(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{headlines.START}\nold figures\n{headlines.END}\nrest\n")
    assert headlines.main(["--readme", str(readme), "--check"]) == 1
    assert headlines.main(["--readme", str(readme)]) == 0
    assert headlines.main(["--readme", str(readme), "--check"]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "old figures" not in text
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="lacks the markers"):
        headlines.main(["--readme", str(readme), "--check"])


def test_readme_is_a_short_map():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


def _markdown_files():
    skip = {".venv", "results", ".git", "node_modules"}
    for path in ROOT.rglob("*.md"):
        if not skip & set(path.relative_to(ROOT).parts):
            yield path


def test_relative_links_resolve_inside_the_repository():
    bad = []
    for path in _markdown_files():
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            resolved = (path.parent / target.split("#")[0]).resolve()
            inside = resolved.is_relative_to(ROOT)
            if not inside or not (resolved.exists() or "results" in resolved.parts):
                bad.append(f"{path.relative_to(ROOT)}: {target}")
    assert not bad, "broken or outside links:\n" + "\n".join(bad)
