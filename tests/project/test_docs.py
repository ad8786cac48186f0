"""The documentation: generated pages current, links that resolve, a short README, and text that speaks of the
software only (no words about how it was made, no citation of files that are not in the repository)."""
from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEXT_SUFFIXES = {".py", ".md", ".json", ".txt", ".toml", ".sh", ".cfg", ".ini", ".yaml", ".yml", ""}

# Words that speak of how the project was developed rather than of the software. Built from parts so that this
# file does not match itself.
DEV_WORDS = [
    r"\b" + "st" + r"ops? \d+",        # a numbered work period
    r"\b" + "sess" + r"ions?\b",      # (pytest's fixture scope is removed before the search, see ALLOWED)
    r"\b" + "throw" + r"away\b",
    r"\b" + "pil" + r"ots?\b",
    r"\b" + "iss" + r"ues? \d+",      # a tracker number
]
OUTSIDE_FILES = [r"\b" + "METHODS" + r"\.md\b", r"\b" + "NOTES" + r"\.md\b", r"\b" + "ARCHITECTURE" + r"\.md\b"]
# Narrow exception: pytest's fixture scope, where the word is the API's own.
ALLOWED = [re.compile(r"""scope=["']""" + "sess" + r"""ion["']""")]


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    files = []
    for name in out.decode().split("\0"):
        p = ROOT / name
        if name and p.suffix in TEXT_SUFFIXES and p.is_file():
            files.append(p)
    return files


def _offending_lines(patterns: list[str]) -> list[str]:
    rx = re.compile("|".join(patterns), re.IGNORECASE)
    bad = []
    for p in _tracked_text_files():
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            for allowed in ALLOWED:
                line = allowed.sub("", line)
            m = rx.search(line)
            if m:
                bad.append(f"{p.relative_to(ROOT)}:{i}: {m.group(0)!r}")
    return bad


def test_no_words_about_how_the_project_was_developed():
    bad = _offending_lines(DEV_WORDS)
    assert not bad, "development history in the repository (say what the software does instead):\n" + "\n".join(bad)


def test_no_citation_of_files_outside_the_repository():
    bad = _offending_lines(OUTSIDE_FILES)
    assert not bad, "cite a docs/ page instead of a file that is not in the repository:\n" + "\n".join(bad)


def test_dev_word_patterns_catch_what_they_should():
    rx = re.compile("|".join(DEV_WORDS), re.IGNORECASE)
    for s in ["measured in st" + "op 21", "a Throw" + "away script", "the pil" + "ots", "a working sess" + "ion", "see iss" + "ue 13"]:
        assert rx.search(s), s
    for s in ["it stops the run", "stop the run at step 5", "autopilot-free", "@pytest.fixture(scope='sess" + "ion')"]:
        line = s
        for allowed in ALLOWED:
            line = allowed.sub("", line)
        assert not rx.search(line), s


def test_readme_is_a_short_manual():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 320, f"README.md has {len(lines)} lines; put the detail in a docs/ page"


def test_readme_keeps_the_ci_test_command():
    """``.ci/run`` runs the README's second set-up command verbatim, inside a bash block."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    cmd = 'python -m pip install -c constraints.txt -e ".[test]" && python -m pytest -q'
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    assert any(cmd in b for b in blocks)
    assert cmd in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_docs", ROOT / "docs" / "build_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("page", ["nodes.md", "cli.md"])
def test_generated_pages_are_current(page):
    builder = _load_builder()
    expected = builder.PAGES[page]()
    committed = (ROOT / "docs" / page).read_text(encoding="utf-8")
    assert committed == expected, f"docs/{page} is stale: run python docs/build_docs.py"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def _anchors(md: Path) -> set[str]:
    anchors, seen = set(), {}
    in_fence = False
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        m = None if in_fence else re.match(r"^#{1,6} (.+)$", line)
        if m:
            base = _slug(m.group(1))
            n = seen.get(base, 0)
            anchors.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return anchors


def _links(md: Path):
    in_fence = False
    for i, line in enumerate(md.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        line = re.sub(r"`[^`]*`", "", line)
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            yield i, target


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_relative_links_resolve():
    bad = []
    for md in _doc_files():
        for i, target in _links(md):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            where = f"{md.relative_to(ROOT)}:{i}: {target}"
            if not dest.exists():
                bad.append(where + " (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(where + " (no such heading)")
            elif ROOT not in dest.parents and dest != ROOT:
                bad.append(where + " (outside the repository)")
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_slug_matches_github():
    assert _slug("Joint training (`train_dualreal`)") == "joint-training-train_dualreal"
    assert _slug("What nodes may read and write (security)") == "what-nodes-may-read-and-write-security"
    assert _slug("torch >= 2.6") == "torch--26"
    assert _slug("3. TTT merge") == "3-ttt-merge"
