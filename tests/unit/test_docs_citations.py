"""The repository documents itself: every reference to a Markdown document points at a file that exists here
(docs/*.md, README.md), every quoted section of a docs/ citation (`docs/methods.md, "GCD"`) and every link
anchor in the docs names a real heading, and no tracked file names an absolute path of one machine.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()

# Markdown files the report writes into results/ (named in code that builds or reads them): not documents.
GENERATED = {"summary.md", "main.md", "relearning.md", "prompt_attacks.md", "whitebox.md", "prism_ablation.md"}
SKIP_DIRS = {".git", ".venv", "results", ".snakemake", "__pycache__", ".pytest_cache", "node_modules"}

# a bare or docs/-relative *.md name, not part of a longer path, a URL or an `owner/repo:path` reference
MD_REF = re.compile(r"(?<![\w/.{}:~-])((?:docs/)?[A-Za-z][\w-]*\.md)\b")
URL = re.compile(r"[a-z]+://\S+")
# `docs/x.md, "Heading", "Other"` or `docs/x.md ("Heading", ...)`; headings in double or single quotes
SECTION_CITE = re.compile(r"""(docs/[\w-]+\.md)(?:,\s*|\s*\(\s*)((?:(?:"[^"\n]+"|'[^'\n]+')(?:,\s*)?)+)""")
QUOTED = re.compile(r""""([^"\n]+)"|'([^'\n]+)'""")
MD_LINK = re.compile(r"\]\(([^)\s]*?)(?:#([^)\s]+))?\)")
ABSOLUTE = re.compile(r"(?<![\w.~-])/(?:work|home|root|Users)/")


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return [f for f in out.splitlines() if (ROOT / f).is_file()]
    except (OSError, subprocess.CalledProcessError):   # an exported tree without git
        return [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
                if p.is_file() and not SKIP_DIRS & set(p.relative_to(ROOT).parts)]


def text_files() -> dict[str, str]:
    out = {}
    for rel in tracked_files():
        try:
            out[rel] = (ROOT / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
    return out


def headings(md: Path) -> list[str]:
    lines, fenced = [], False
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            lines.append(line.lstrip("#").strip())
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors(md: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for h in headings(md):
        s = slug(h)
        n = seen.get(s, 0)
        out.add(s if n == 0 else f"{s}-{n}")
        seen[s] = n + 1
    return out


def resolve(rel: str, ref: str) -> Path | None:
    for cand in (ROOT / ref, (ROOT / rel).parent / ref):
        if cand.is_file():
            return cand
    return None


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    found = text_files()
    assert "README.md" in found, "run from a checkout: README.md not found"
    return found


def test_every_markdown_reference_exists(files):
    bad = []
    for rel, text in files.items():
        if rel.startswith("tests/fixtures/") or rel == SELF:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for m in MD_REF.finditer(URL.sub("", line)):
                ref = m.group(1)
                if Path(ref).name in GENERATED:
                    continue
                if resolve(rel, ref) is None:
                    bad.append(f"{rel}:{n}: {ref}")
    assert not bad, "references to Markdown files that do not exist in the repository:\n" + "\n".join(bad)


def test_quoted_sections_of_docs_citations_exist(files):
    bad = []
    cache: dict[str, list[str]] = {}
    for rel, text in files.items():
        if rel == SELF:
            continue
        for m in SECTION_CITE.finditer(text):
            doc = ROOT / m.group(1)
            if not doc.is_file():
                continue   # reported by test_every_markdown_reference_exists
            hs = cache.setdefault(m.group(1), headings(doc))
            for q in QUOTED.finditer(m.group(2)):
                h = q.group(1) or q.group(2)
                if h not in hs:
                    line = text.count("\n", 0, m.start()) + 1
                    bad.append(f"{rel}:{line}: {m.group(1)} has no section {h!r}")
    assert not bad, "citations of sections that do not exist:\n" + "\n".join(bad)


def test_links_between_docs_resolve(files):
    bad = []
    for rel, text in files.items():
        if not rel.endswith(".md") or rel.startswith("tests/fixtures/"):
            continue
        for m in MD_LINK.finditer(text):
            target, anchor = m.group(1), m.group(2)
            if re.match(r"[a-z]+:", target):
                continue                      # a URL
            path = (ROOT / rel) if target == "" else (ROOT / rel).parent / target
            if not path.exists():
                bad.append(f"{rel}: link to missing {target}")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                bad.append(f"{rel}: {target or rel}#{anchor} names no heading")
    assert not bad, "\n".join(bad)


def test_no_absolute_machine_paths(files):
    bad = [f"{rel}:{text.count(chr(10), 0, m.start()) + 1}: {text[m.start():m.start() + 40].splitlines()[0]}"
           for rel, text in files.items() if not rel.startswith("tests/fixtures/") and rel != SELF
           for m in ABSOLUTE.finditer(text)]
    assert not bad, "absolute paths of one machine in tracked files:\n" + "\n".join(bad)


def test_readme_is_short(files):
    n = len(files["README.md"].splitlines())
    assert n <= 150, f"README.md has {n} lines; details belong in docs/"


def test_the_checks_catch_what_they_should(tmp_path):
    """The patterns on hand-made lines: a missing doc, a bad section, an absolute path, a bad anchor."""
    refs = [m.group(1) for m in MD_REF.finditer('see method.md §5.3, docs/methods.md, README.md, x/y.md, a:b.md')]
    assert refs == ["method.md", "docs/methods.md", "README.md"]
    assert resolve("src/x.py", "method.md") is None and resolve("src/x.py", "docs/methods.md") is not None
    cite = SECTION_CITE.search('(docs/methods.md, "GCD", "No such section"): text')
    assert [q.group(1) for q in QUOTED.finditer(cite.group(2))] == ["GCD", "No such section"]
    assert "GCD" in headings(ROOT / "docs/methods.md")
    assert "No such section" not in headings(ROOT / "docs/methods.md")
    root = "/"   # built at run time, so this file holds no machine path itself
    assert ABSOLUTE.search(f"cat {root}work/shared/x") and ABSOLUTE.search(f"({root}home/alice/x)")
    assert ABSOLUTE.search(f"path ~{root}work/x") is None and ABSOLUTE.search(f"results{root}home/x") is None
    assert slug("Method speed (`make bench`)") == "method-speed-make-bench"
    assert slug("SAM+NPO") == "samnpo" and slug("The γ schedule") == "the-γ-schedule"
    md = tmp_path / "a.md"
    md.write_text("# Title\n## Two words\n## Two words\n")
    assert anchors(md) == {"title", "two-words", "two-words-1"}
