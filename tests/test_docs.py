"""README.md and docs/: generated blocks up to date with the code, a page per objective, links that resolve, and no
reference to the internal specification or to files outside the repository."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from hf_seqobj.objectives import OBJECTIVES


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import make_docs  # noqa: E402


DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", make_docs.pages(), ids=lambda path: str(path.relative_to(ROOT)))
def test_generated_blocks_are_up_to_date(page):
    text = page.read_text(encoding="utf-8")
    assert make_docs.render(text, page.name) == text, (
        f"{page.relative_to(ROOT)} is out of date with the code: run `python scripts/make_docs.py`"
    )


def test_render_rewrites_only_the_blocks_and_names_bad_ones():
    stale = "Intro.\n<!-- generated: oracles -->\nold text\n<!-- /generated -->\nOutro.\n"
    rendered = make_docs.render(stale)
    assert rendered.startswith("Intro.\n<!-- generated: oracles -->\n| oracle | scores |")
    assert rendered.endswith("Outro.\n")
    assert "| `span_f1` | BIO tags | yes |" in rendered
    assert "old text" not in rendered and make_docs.render(rendered) == rendered
    with pytest.raises(ValueError, match=r"page\.md:1: unknown generated block 'frobnicate'"):
        make_docs.render("<!-- generated: frobnicate -->\n<!-- /generated -->\n", "page.md")
    with pytest.raises(ValueError, match=r"page\.md:1: the generated block 'tasks' has no closing"):
        make_docs.render("<!-- generated: tasks -->\n", "page.md")


def test_settings_tables_hold_every_field_with_its_default():
    import dataclasses

    from transformers import HfArgumentParser

    from hf_seqobj.trainers import SeqObjTrainingArguments

    HfArgumentParser(SeqObjTrainingArguments)  # replaces the fields' string annotations by types: the same tables
    for name, cls in OBJECTIVES.items():
        table = "\n".join(make_docs.settings(name))
        for setting in cls.settings:
            for field in dataclasses.fields(setting):
                assert f"| `{field.name}` |" in table, f"{name}: {field.name} missing from its settings table"
                assert make_docs._default(field) in table
    assert "| `interp_lambda` | `list[float]` |" in "\n".join(make_docs.settings("interpolation"))


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_has_a_page_with_its_generated_sections(name):
    page = ROOT / "docs" / f"{name}.md"
    assert page.exists(), f"objective {name!r} has no docs/{name}.md"
    text = page.read_text(encoding="utf-8")
    for kind in ("settings", "logged", "cost", "papers"):
        assert f"<!-- generated: {kind} {name} -->" in text, f"docs/{name}.md has no generated {kind} block"
    assert f"(docs/{name}.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("page", PAGES, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+://|mailto:|#", target):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{page.name} links to {target}, outside the repository"
        assert path.exists(), f"{page.name} links to {target}, which does not exist"


def test_readme_is_short_and_self_contained():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text) <= 10_000, f"README.md has {len(text)} characters (at most 10,000: move detail into docs/)"
    assert "../" not in text and "shared/data" not in text, "README.md refers to files outside the repository"


def test_nothing_cites_the_internal_specification():
    name = "METHODS" + ".md"
    found = []
    for folder in ("hf_seqobj", "tests", "scripts", "configs", "docs", "benchmarks"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".md", ".yaml", ".sh"}:
                found += [
                    f"{path.relative_to(ROOT)}"
                    for line in path.read_text(encoding="utf-8").splitlines()
                    if name in line
                ]
    found += ["README.md"] if name in (ROOT / "README.md").read_text(encoding="utf-8") else []
    assert not found, f"{name} is not part of the repository, but these cite it: {sorted(set(found))}"
