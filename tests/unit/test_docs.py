"""docs/protocols.md: every section that the source and config files cite exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOCOLS = ROOT / "docs" / "protocols.md"
# "protocols.md §5.1 / §5.2": every § number that follows a mention of the document on the same line.
CITATION = re.compile(r"protocols\.md\b(.*)")
SECTION = re.compile(r"§\s*(\d+(?:\.\d+)?)")
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", re.MULTILINE)


def cited_sections() -> dict[str, list[str]]:
    """Section number -> the ``file:line`` places in src/ and configs/ that cite it."""
    cited: dict[str, list[str]] = {}
    for path in sorted([*(ROOT / "src").rglob("*"), *(ROOT / "configs").rglob("*")]):
        if not path.is_file() or path.suffix not in {".py", ".yaml", ".txt", ".md"} or "egg-info" in str(path):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for match in CITATION.finditer(line):
                for section in SECTION.findall(match.group(1)):
                    cited.setdefault(section, []).append(f"{path.relative_to(ROOT)}:{number}")
    return cited


def test_every_cited_protocols_section_is_a_heading_of_docs_protocols_md() -> None:
    headings = set(HEADING.findall(PROTOCOLS.read_text(encoding="utf-8")))
    cited = cited_sections()
    assert {"1", "2.3", "4.4", "5.1", "6"} <= set(cited)  # the scan does find the citations
    missing = {section: places for section, places in cited.items() if section not in headings}
    assert not missing, f"docs/protocols.md has no heading for {missing}"


def test_citations_name_the_document_by_its_path() -> None:
    bare = [place for place in _mentions() if not place[1].startswith("docs/")]
    assert not bare, f"cite docs/protocols.md, not a bare protocols.md: {[p for p, _ in bare]}"


def _mentions() -> list[tuple[str, str]]:
    """(``file:line``, the text from the path's start) of every mention of protocols.md in src/ and configs/."""
    mentions = []
    for path in sorted([*(ROOT / "src").rglob("*"), *(ROOT / "configs").rglob("*")]):
        if not path.is_file() or path.suffix not in {".py", ".yaml", ".txt", ".md"} or "egg-info" in str(path):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for match in re.finditer(r"[\w./-]*protocols\.md", line):
                mentions.append((f"{path.relative_to(ROOT)}:{number}", match.group(0)))
    return mentions
