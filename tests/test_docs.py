"""The repository's docs are its specification: every reference to them resolves.

Code, tests and docs cite "docs/contract.md section N" and "docs/reliability.md
scenario N"; each cited page, section and scenario must exist, and every test a
scenario names as its proof must be a test function in that file.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
SOURCES = ("bench_contract", "ingest_app", "runner", "tests", "scripts", "bench", "deploy", "docs")
TOP_FILES = ("README.md", "Makefile", "Dockerfile", "Procfile", "gunicorn.conf.py", "setup.cfg",
             "pyproject.toml")
SUFFIXES = {".py", ".md", ".service", ".timer", ".example", ".sh", ".cfg", ".toml", ""}

_PAGE = re.compile(r"docs/([a-z_-]+\.md)")
_NUMBERS = r"(\d+(?:-\d+)?(?:(?:,\s*|\s+and\s+)\d+(?:-\d+)?)*)"
_SECTION = re.compile(r"docs/contract\.md,?\s+sections?\s+" + _NUMBERS)
_SCENARIO = re.compile(r"docs/reliability\.md,?\s+scenarios?\s+" + _NUMBERS)
_TEST_REF = re.compile(r"`([\w./-]+\.py)::(\w+)`")


def project_files() -> list[Path]:
    """The files of the project that may cite its docs."""
    files = [REPO / name for name in TOP_FILES if (REPO / name).is_file()]
    for folder in SOURCES:
        files += [p for p in sorted((REPO / folder).rglob("*"))
                  if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts]
    return files


def numbers(text: str) -> set[int]:
    """1, 3 and 14-16 -> {1, 3, 14, 15, 16}."""
    found: set[int] = set()
    for part in re.split(r",\s*|\s+and\s+", text):
        low, _, high = part.partition("-")
        found.update(range(int(low), int(high or low) + 1))
    return found


def citations(pattern: re.Pattern[str]) -> dict[int, list[str]]:
    """Each number the pattern cites, with where it is cited."""
    cited: dict[int, list[str]] = {}
    for path in project_files():
        text = " ".join(path.read_text(errors="replace").split())
        for match in pattern.finditer(text):
            for n in numbers(match.group(1)):
                cited.setdefault(n, []).append(str(path.relative_to(REPO)))
    return cited


def test_every_docs_page_cited_exists():
    missing = {}
    for path in project_files():
        for page in _PAGE.findall(path.read_text(errors="replace")):
            if not (DOCS / page).is_file():
                missing.setdefault(page, []).append(str(path.relative_to(REPO)))
    assert not missing, f"cited pages that do not exist: {missing}"


def test_every_contract_section_cited_exists():
    contract = (DOCS / "contract.md").read_text()
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", contract, flags=re.MULTILINE)}
    cited = citations(_SECTION)
    assert cited, "nothing cites docs/contract.md by section; the pattern is broken"
    missing = {n: where for n, where in cited.items() if n not in sections}
    assert not missing, f"cited sections that docs/contract.md does not have: {missing}"


def test_every_reliability_scenario_cited_exists():
    reliability = (DOCS / "reliability.md").read_text()
    rows = {int(n) for n in re.findall(r"^\| (\d+) \|", reliability, flags=re.MULTILINE)}
    cited = citations(_SCENARIO)
    assert cited, "nothing cites docs/reliability.md by scenario; the pattern is broken"
    missing = {n: where for n, where in cited.items() if n not in rows}
    assert not missing, f"cited scenarios that docs/reliability.md does not have: {missing}"


def test_every_scenario_names_tests_that_exist():
    reliability = (DOCS / "reliability.md").read_text()
    rows = re.findall(r"^\| (\d+) \|(.*)$", reliability, flags=re.MULTILINE)
    assert rows
    missing = []
    for number, row in rows:
        proofs = _TEST_REF.findall(row)
        assert proofs, f"scenario {number} names no test that shows it"
        for filename, function in proofs:
            path = REPO / "tests" / filename
            if not path.is_file() or not re.search(
                    rf"^(?:async )?def {function}\(", path.read_text(), flags=re.MULTILINE):
                missing.append(f"scenario {number}: tests/{filename}::{function}")
    assert not missing, "tests named in docs/reliability.md that do not exist: " + ", ".join(
        missing)
