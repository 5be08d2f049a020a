"""Regenerates the generated blocks of README.md and docs/*.md from the code, so that the docs cannot drift from it.

    python scripts/make_docs.py            # rewrite the blocks in place
    python scripts/make_docs.py --check    # exit 1, naming the stale files, if a rewrite would change anything

A generated block is everything between a line `<!-- generated: KIND ARGS -->` and the next `<!-- /generated -->`;
the rest of a page is written by hand. The kinds:

- `settings OBJECTIVE`: the objective's settings tables, one per settings dataclass of its registration
  (`register_objective(name, settings=...)`): every field with its type, default and help text.
- `fields MODULE.CLASS PATTERN[,PATTERN...]`: the same table for the fields of any dataclass whose names match one
  of the shell-style patterns (e.g. `hf_seqobj.arguments.ModelArguments use_peft,lora_*`).
- `logged OBJECTIVE`: the "Logged (...)" paragraph of the objective class's docstring.
- `docstring MODULE[.OBJECT]`: a docstring, verbatim in a text block (cross-reference roles shortened).
- `papers OBJECTIVE`: the papers of the objective's registration, as a list and as BibTeX.
- `cost OBJECTIVE`: the rows of the objective in the speed benchmark (`benchmarks/results/speed_cpu.json`).
- `objectives LINK_PREFIX`: the table of registered objectives, each linking to `LINK_PREFIX + NAME.md`.
- `tasks`: the registered tasks with the first line of their docstrings.
- `oracles`: the registered oracles (the accepted values of `oracle`) with their registrations.
- `accelerate_configs`: the packaged accelerate configs with their first comment line and main settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import importlib
import inspect
import json
import re
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/*.md")
"""The files that may hold generated blocks (globs relative to the repository root)."""
SPEED_RESULTS = ROOT / "benchmarks" / "results" / "speed_cpu.json"

BEGIN = re.compile(r"^<!-- generated: (?P<spec>[^>]*?) -->$")
END = "<!-- /generated -->"


# ----------------------------------------------------------------------------------------------------- helpers
def _objective(name: str):
    from hf_seqobj.objectives import OBJECTIVES

    if name not in OBJECTIVES:
        raise ValueError(f"No registered objective {name!r}; registered: {', '.join(OBJECTIVES)}.")
    return OBJECTIVES[name]


def _resolve(path: str):
    """The module, class or function a dotted path names (its longest importable module prefix, then attributes)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        return target
    raise ValueError(f"Cannot import {path!r}.")


def _roles(text: str) -> str:
    """Sphinx cross-reference roles as plain code: :func:`~a.b.c` -> `c`, :class:`a.B` -> `a.B`."""

    def shorten(match: re.Match) -> str:
        target = match.group(1)
        return "`" + (target[1:].rsplit(".", 1)[-1] if target.startswith("~") else target) + "`"

    return re.sub(r":[a-z]+:`([^`]+)`", shorten, text)


def _cell(text: str) -> str:
    """One line of a table cell: `|` escaped, and `<` / `>` outside code spans (`<bksp>` is no HTML tag)."""
    parts = " ".join(str(text).split()).replace("|", "\\|").split("`")
    for index in range(0, len(parts), 2):  # the even parts are outside code spans
        parts[index] = parts[index].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _type_name(cls: type, field: dataclasses.Field) -> str:
    """The field's annotation as written (`HfArgumentParser` replaces `field.type` by the evaluated type)."""
    for klass in cls.__mro__:
        annotation = klass.__dict__.get("__annotations__", {}).get(field.name)
        if annotation is not None:
            return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    return field.type if isinstance(field.type, str) else inspect.formatannotation(field.type)


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "(required)"
    return f"`{value!r}`" if isinstance(value, str) else f"`{value}`"


def _fields_table(cls: type, fields: list[dataclasses.Field]) -> list[str]:
    lines = ["| setting | type | default | meaning |", "|---|---|---|---|"]
    for field in fields:
        help_text = _cell(field.metadata.get("help", ""))
        if not help_text:
            raise ValueError(f"The field {field.name!r} has no help text (metadata={{'help': ...}}).")
        kind = _cell(_type_name(cls, field))
        lines.append(f"| `{field.name}` | `{kind}` | {_cell(_default(field))} | {help_text} |")
    return lines


def _paper(bibtex: str) -> dict[str, str]:
    """The title, authors, year and arXiv id of a BibTeX entry (fields in braces)."""
    fields = dict(re.findall(r"(\w+)\s*=\s*\{((?:[^{}]|\{[^{}]*\})*)\}", bibtex))
    return {key.lower(): " ".join(value.replace("{", "").replace("}", "").split()) for key, value in fields.items()}


def _authors(paper: dict[str, str]) -> str:
    """ "Smith", "Smith and Jones" or "Smith et al." from a BibTeX author list of "Last, First and ..." names."""
    names = [author.split(",")[0].strip() for author in paper.get("author", "").split(" and ") if author.strip()]
    if len(names) > 2:
        return f"{names[0]} et al."
    return " and ".join(names)


def _paper_line(bibtex: str) -> str:
    paper = _paper(bibtex)
    who = _authors(paper)
    venue = paper.get("booktitle") or paper.get("journal") or ""
    line = f"{who} ({paper.get('year', '')}), *{paper.get('title', '')}*"
    if venue and not venue.startswith("arXiv"):
        line += f", {venue}"
    eprint = paper.get("eprint")
    if eprint:
        line += f", [arXiv:{eprint}](https://arxiv.org/abs/{eprint})"
    return line


def _short_paper(bibtex: str) -> str:
    paper = _paper(bibtex)
    eprint = paper.get("eprint")
    text = f"{_authors(paper)} {paper.get('year', '')}"
    return f"[{text}](https://arxiv.org/abs/{eprint})" if eprint else text


# ------------------------------------------------------------------------------------------------------- kinds
def settings(name: str) -> list[str]:
    from hf_seqobj.objectives import OBJECTIVES

    cls = _objective(name)
    if not cls.settings:
        return [f"`{name}` has no settings of its own: the stock training arguments apply."]
    lines: list[str] = []
    for setting in cls.settings:
        users = [other for other, other_cls in OBJECTIVES.items() if setting in other_cls.settings]
        shared = f", shared with {', '.join(f'`{u}`' for u in users if u != name)}" if len(users) > 1 else ""
        if lines:
            lines.append("")
        lines.append(f"`{setting.__name__}` (`{setting.__module__}`{shared}):")
        lines.append("")
        lines += _fields_table(setting, list(dataclasses.fields(setting)))
    return lines


def fields(path: str, patterns: str) -> list[str]:
    cls = _resolve(path)
    wanted = patterns.split(",")
    chosen = [f for f in dataclasses.fields(cls) if any(fnmatch.fnmatchcase(f.name, p) for p in wanted)]
    if not chosen:
        raise ValueError(f"No field of {path} matches {patterns!r}.")
    return _fields_table(cls, chosen)


def logged(name: str) -> list[str]:
    doc = inspect.getdoc(_objective(name)) or ""
    found = re.search(r"^Logged \((?P<mode>[^)]*)\):\s*(?P<text>.*?)(?:\n\s*\n|\Z)", doc, re.S | re.M)
    if found is None:
        if name == "mle":
            return ["Nothing beyond the Trainer's own figures (`loss`, `grad_norm`, `learning_rate`, ...)."]
        raise ValueError(f"The docstring of objective {name!r} has no 'Logged (...):' paragraph.")
    text = " ".join(_roles(found.group("text")).split())
    return [f"Logged ({found.group('mode')}), besides the Trainer's own figures: {text}"]


def docstring(path: str) -> list[str]:
    doc = inspect.getdoc(_resolve(path))
    if not doc:
        raise ValueError(f"{path} has no docstring.")
    return [f"The docstring of `{path}`:", "", "```text", *_roles(doc).splitlines(), "```"]


def papers(name: str) -> list[str]:
    cls = _objective(name)
    if not cls.papers:
        return ["None registered: teacher forcing is the standard baseline."]
    lines = [f"- {_paper_line(entry)}" for entry in cls.papers]
    lines += ["", "```bibtex", *"\n\n".join(cls.papers).splitlines(), "```"]
    return lines


def cost(name: str) -> list[str]:
    rows = json.loads(SPEED_RESULTS.read_text(encoding="utf-8"))
    mine = [row for row in rows if re.match(rf"{re.escape(name)}\b", row["name"].split("/", 1)[-1])]
    if not mine:
        return ["Not in the speed benchmark yet."]
    lines = [
        "| task | variant | model | ms per step | time vs mle | peak step memory vs mle |",
        "|---|---|---|---|---|---|",
    ]
    later = False
    for row in mine:
        task, variant = row["name"].split("/", 1)
        commit = row.get("environment", {}).get("commit")  # recorded by the runs after the table's first one
        if commit:
            variant, later = f"{variant} [{commit[:7]}]", True
        memory = row.get("peak_step_memory_ratio_to_mle")
        lines.append(
            f"| {task} | {_cell(variant)} | {_cell(row.get('model', ''))} | {1000 * row['seconds_per_step']:.1f} | "
            f"{row['ratio_to_mle']:.2f}x | {'' if memory is None else f'{memory:.2f}x'} |"
        )
    if later:
        lines += [
            "",
            "Rows marked [commit] come from a later run, their ratio to that run's own teacher-forcing step; ratios "
            "of one row differ by up to 40% between runs (speed.md).",
        ]
    return lines


def objectives(prefix: str = "") -> list[str]:
    from hf_seqobj.objectives import OBJECTIVES

    lines = ["| objective | what it trains on | paper |", "|---|---|---|"]
    order = sorted(OBJECTIVES, key=lambda name: (name != "mle", name))  # the baseline first
    for name in order:
        cls = OBJECTIVES[name]
        cited = ", ".join(_short_paper(entry) for entry in cls.papers) or "(baseline)"
        lines.append(f"| [`{name}`]({prefix}{name}.md) | {_cell(cls.description)} | {cited} |")
    return lines


def tasks() -> list[str]:
    from hf_seqobj.tasks import TASKS

    lines = ["| task | class | what it is |", "|---|---|---|"]
    for name, cls in TASKS.items():
        first = _cell(_roles((inspect.getdoc(cls) or "").split("\n\n")[0]))
        lines.append(f"| `{name}` | `{cls.__module__}.{cls.__name__}` | {first} |")
    return lines


def oracles() -> list[str]:
    from hf_seqobj.oracles import ORACLES

    kinds = {"bio_tags": "BIO tags", "text": "text"}
    lines = ["| oracle | scores | exact | settings | what it is |", "|---|---|---|---|---|"]
    for name, spec in ORACLES.items():
        used = ", ".join(f"`oracle_{setting}`" for setting in spec.settings) or "none"
        exact = "yes" if spec.exact else "no (search)"
        lines.append(f"| `{name}` | {kinds.get(spec.output, spec.output)} | {exact} | {used} | {_cell(spec.doc)} |")
    return lines


def accelerate_configs() -> list[str]:
    import yaml

    from hf_seqobj.cli import ACCELERATE_CONFIGS

    lines = ["| name | what it is | distributed type | processes | mixed precision |", "|---|---|---|---|---|"]
    for path in sorted(ACCELERATE_CONFIGS.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        # the first sentence of the opening comment (up to an indented usage line or the first setting)
        opening = []
        for line in text.splitlines():
            if not line.startswith("#") or line.startswith("#  "):
                break
            opening.append(line[1:].strip())
        first = " ".join(opening).split(". ")[0].rstrip(".") + "." if opening else ""
        config = yaml.safe_load(text)
        lines.append(
            f"| `{path.stem}` | {_cell(first)} | `{config.get('distributed_type')}` | "
            f"{config.get('num_processes', '')} | `{config.get('mixed_precision', 'no')}` |"
        )
    return lines


KINDS = {
    "settings": settings,
    "fields": fields,
    "logged": logged,
    "docstring": docstring,
    "papers": papers,
    "cost": cost,
    "objectives": objectives,
    "tasks": tasks,
    "oracles": oracles,
    "accelerate_configs": accelerate_configs,
}


# -------------------------------------------------------------------------------------------------------- pages
def render(text: str, where: str = "<text>") -> str:
    """`text` with every generated block rewritten from the code."""
    lines = text.splitlines()
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        out.append(line)
        begin = BEGIN.match(line.strip())
        index += 1
        if begin is None:
            continue
        kind, *args = begin.group("spec").split()
        if kind not in KINDS:
            raise ValueError(f"{where}:{index}: unknown generated block {kind!r}; kinds: {', '.join(KINDS)}.")
        end = next((i for i in range(index, len(lines)) if lines[i].strip() == END), None)
        if end is None:
            raise ValueError(f"{where}:{index}: the generated block {kind!r} has no closing {END!r} line.")
        out += KINDS[kind](*args)
        out.append(END)
        index = end + 1
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def pages() -> list[Path]:
    """The files that hold generated blocks."""
    found = sorted({path for pattern in PAGES for path in ROOT.glob(pattern)})
    return [path for path in found if "<!-- generated:" in path.read_text(encoding="utf-8")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Only report the files that are out of date.")
    args = parser.parse_args(argv)
    stale = []
    for path in pages():
        text = path.read_text(encoding="utf-8")
        rendered = render(text, str(path.relative_to(ROOT)))
        if rendered != text:
            stale.append(str(path.relative_to(ROOT)))
            if not args.check:
                path.write_text(rendered, encoding="utf-8")
    if args.check and stale:
        print(f"Out of date (run python scripts/make_docs.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    for name in stale:
        print(f"rewrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
