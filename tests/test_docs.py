"""The README stays a newcomer's page, and the documents' links lead somewhere.

The README is capped at 20,000 bytes (issue 12): operations, guarantees, benchmarks and the
architecture in depth live in ``docs/``. Every relative link in the README and ``docs/*.md``
must name a file of the repository, and a ``#fragment`` a heading of that file (as GitHub
makes anchors), so that moving a section does not leave dead links behind.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_BYTES = 20_000

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.MULTILINE)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose(text: str) -> str:
    """The text without code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _links(text: str) -> list[str]:
    prose = _prose(text)
    return INLINE_LINK.findall(prose) + REFERENCE.findall(prose)


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of *path*: lower case, punctuation dropped,
    spaces as hyphens, ``-1``, ``-2``... for repeats."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _broken(doc: Path) -> list[str]:
    broken = []
    for target in _links(doc.read_text(encoding="utf-8")):
        if SCHEME.match(target):
            continue  # http(s), mailto: not ours to check here
        path_part, _, fragment = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
            broken.append(f"{target}: no such heading in {dest.name}")
    return broken


def test_readme_at_most_20000_bytes() -> None:
    size = README.stat().st_size
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; move detail into docs/"


def test_readme_gives_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text
    assert "make test" in text


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(doc: Path) -> None:
    assert not _broken(doc)


def test_every_doc_is_linked_from_the_readme() -> None:
    linked = {
        (README.parent / t.partition("#")[0]).resolve()
        for t in _links(README.read_text(encoding="utf-8"))
        if not SCHEME.match(t)
    }
    assert DOCS, "docs/ has no documents"
    assert not [d.name for d in DOCS if d.resolve() not in linked]


def test_readme_configuration_names_every_variable() -> None:
    """Every variable of ``config/relay.env.example`` has a row in the README's configuration
    table, and the example's value (its default) appears in that row's default column."""
    rows = [
        line
        for line in README.read_text(encoding="utf-8").splitlines()
        if line.startswith("| `") and line.count("|") >= 4
    ]
    missing = []
    example = (ROOT / "config" / "relay.env.example").read_text(encoding="utf-8")
    for name, value in re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", example, re.MULTILINE):
        row = next((r for r in rows if f"`{name}`" in r.split("|")[1]), None)
        if row is None:
            missing.append(f"{name}: no row")
        elif value and value not in row.rstrip(" |").rsplit("|", 1)[-1]:
            missing.append(f"{name}: default {value!r} not in its row")
    assert not missing


def test_the_link_checker_finds_broken_links(tmp_path: Path) -> None:
    """The checks above would pass vacuously if links or anchors were not found."""
    (tmp_path / "other.md").write_text("# Other\n\n## A section (with `code`)\n", encoding="utf-8")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Doc\n\n[ok](other.md) [ok](other.md#a-section-with-code) [ok](#doc)\n"
        "[gone](missing.md) [no anchor](other.md#nowhere) `[code](missing-too.md)`\n\n"
        "```\n[fenced](missing-three.md)\n```\n\n[ref]: ./missing-four.md\n"
        "[web](https://example.com/missing.md)\n",
        encoding="utf-8",
    )
    assert [b.split(": ")[0] for b in _broken(doc)] == [
        "missing.md",
        "other.md#nowhere",
        "./missing-four.md",
    ]


ID_SHOWN = re.compile(r"\b(wat|evt)_([A-Za-z0-9]+)")


def test_ids_shown_in_the_docs_and_the_api_document_could_be_real() -> None:
    """An id the README, ``docs/`` or the OpenAPI document shows as an example is spelled as
    the relay spells ids (lower-case base32: ``a-z``, ``2-7``), so one copied into a test
    client or a log search is not refused for its form."""
    from relay.api.openapi import document

    texts = {p.name: p.read_text(encoding="utf-8") for p in [README, *DOCS]}
    texts["openapi.json"] = json.dumps(document())
    bad = [
        f"{name}: {m.group(0)}"
        for name, text in texts.items()
        for m in ID_SHOWN.finditer(text)
        if not re.fullmatch(r"[a-z2-7]+", m.group(2))
    ]
    assert not bad, bad
