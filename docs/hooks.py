"""MkDocs hooks: the pages that are generated from the code and the published rows, so that
they cannot drift from them.

* ``strategies/<name>.md``: one page per registered strategy: what it is (its module's
  docstring), its verdicts and its known failures in the published reports, with the rows;
* ``<!-- cli-reference -->``: every ``conformance`` command and option, from the parser;
* ``<!-- check-catalogue -->``: every check, its profile and what it asks, from the registry;
* ``<!-- diagnosis-catalogue -->``: every mechanism, what reproduces it and its planted fault,
  from ``conformance/judging/diagnoses.py``, with a real-model row of each.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import re
from pathlib import Path

import pandas as pd
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
#: The published reports whose rows the pages quote (the biggest one, 89 MB, is left out).
REPORTS = ("quick-cpu", "torchvision-all-cpu", "timm-families-cpu")


def slug(strategy: str) -> str:
    return strategy.replace("+", "-")


@functools.cache
def published_rows() -> pd.DataFrame:
    frames = []
    for report in REPORTS:
        path = ROOT / "reports" / report / "results.csv"
        if path.exists():
            frame = pd.read_csv(path, usecols=["model", "strategy", "check", "layer", "status", "diagnosis", "detail"],
                                keep_default_na=False)
            frames.append(frame.assign(report=report))
    columns = ["model", "strategy", "check", "layer", "status", "diagnosis", "detail", "report"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def strategy_page(name: str) -> str:
    from strategies._registry import _known

    module_name = _known[name][0].partition(":")[0]
    try:
        doc = importlib.import_module(module_name).__doc__ or ""
    except ImportError as exc:  # an optional package this docs build lacks
        doc = f"(its package is not installed where these docs were built: {exc})"
    rows = published_rows().query("strategy == @name")
    lines = [f"# `{name}`", "", doc.strip(), "", f"Source: `{module_name.replace('.', '/')}.py`.", ""]
    if rows.empty:
        return "\n".join([*lines, "No published rows yet."]) + "\n"
    lines += ["## Verdicts in the published reports", "",
              f"Rows of {', '.join(f'`reports/{r}`' for r in REPORTS)}, by check (`conformance matrix` gives the same per report).", "",
              "| check | pass | fail | error | unsupported | skipped |", "| --- | --- | --- | --- | --- | --- |"]
    counts = rows.groupby(["check", "status"]).size().unstack(fill_value=0)
    for check, count in counts.iterrows():
        lines.append(f"| `{check}` | " + " | ".join(str(count.get(status, 0)) for status in ("pass", "fail", "error", "unsupported", "skipped")) + " |")
    failures = rows[rows.status.isin(["fail", "error"])]
    lines += ["", "## Known failures", ""]
    if failures.empty:
        lines.append("None in the published reports.")
    else:
        lines += ["Each diagnosis is a measured mechanism ([Diagnoses](../diagnoses.md)); three rows of each, the most frequent first.", "",
                  "| diagnosis | rows | report | model | check | layer | detail |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for diagnosis, group in sorted(failures.groupby("diagnosis"), key=lambda item: -len(item[1]))[:12]:
            for index, row in enumerate(group.head(3).itertuples()):
                lead = f"`{diagnosis or '(none)'}` | {len(group)}" if index == 0 else " | "
                lines.append(f"| {lead} | {row.report} | `{row.model}` | `{row.check}` | `{_cell(row.layer, 40)}` | {_cell(row.detail)} |")
    return "\n".join(lines) + "\n"


def on_files(files, config):
    from strategies import list_strategies

    for name in list_strategies():
        files.append(File.generated(config, f"strategies/{slug(name)}.md", content=strategy_page(name)))
    return files


def cli_reference() -> str:
    from conformance.cli import _parser

    parser = _parser()
    subcommands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in subcommands._choices_actions}
    lines = []
    for command, sub in subcommands.choices.items():
        lines += [f"## `conformance {command}`", "", helps.get(command, ""), "", "| option | default | what |", "| --- | --- | --- |"]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flags = ", ".join(f"`{flag}`" for flag in action.option_strings) or f"`{action.dest}`"
            default = "" if action.default in (None, argparse.SUPPRESS, False) else f"`{action.default}`"
            choices = f" (one of {', '.join(map(str, action.choices))})" if action.choices else ""
            lines.append(f"| {flags} | {_cell(default, 60)} | {_cell((action.help or '') + choices, 400)} |")
        lines.append("")
    return "\n".join(lines)


def check_catalogue() -> str:
    from conformance.judging.profiles import ALL_CHECKS, PER_LAYER_CHECKS, PROFILES, describe

    rows = published_rows()
    lines = ["| check | per | profiles | asks | a failing row of a real model |", "| --- | --- | --- | --- | --- |"]
    for name in ALL_CHECKS:
        profiles = ", ".join(f"`{profile}`" for profile, checks in PROFILES.items() if name in checks)
        failing = rows[(rows["check"] == name) & (rows.status == "fail")].head(1)
        example = "" if failing.empty else (f"`{failing.iloc[0].model}` `{failing.iloc[0].strategy}` `{_cell(failing.iloc[0].layer, 30)}`: "
                                            f"{failing.iloc[0].diagnosis}, {_cell(failing.iloc[0].detail, 120)}")
        lines.append(f"| `{name}` | {'layer' if name in PER_LAYER_CHECKS else 'request'} | {profiles} | {_cell(describe(name), 300)} | {example} |")
    return "\n".join(lines)


def _docstring_table(text: str) -> list[list[str]]:
    """The rows of the reStructuredText simple table in ``text``: cells joined over continuation lines."""
    lines = text.splitlines()
    rules = [index for index, line in enumerate(lines) if re.fullmatch(r"=+( +=+)+", line.strip())]
    columns = [(match.start(), match.end()) for match in re.finditer(r"=+", lines[rules[0]])]
    rows: list[list[str]] = []
    for line in lines[rules[1] + 1: rules[2]]:
        cells = [line[start: (columns[i + 1][0] if i + 1 < len(columns) else None)].strip() for i, (start, _) in enumerate(columns)]
        if cells[0] and not cells[0].startswith("+"):
            rows.append(cells)
        elif rows:
            rows[-1] = [f"{old} {new}".strip() if new else old for old, new in zip(rows[-1], cells)]
    return rows


def diagnosis_catalogue() -> str:
    from conformance.judging import diagnoses

    rows = published_rows()
    lines = ["| diagnosis | reproduced by | planted fault | a row of a real model |", "| --- | --- | --- | --- |"]
    for name, reproduced, planted in _docstring_table(diagnoses.__doc__):
        rst = lambda text: re.sub(r"``([^`]+)``", r"`\1`", text)  # noqa: E731
        found = rows[rows.diagnosis == name].head(1)
        example = "" if found.empty else (f"{found.iloc[0].report}: `{found.iloc[0].model}` `{found.iloc[0].strategy}` "
                                          f"`{_cell(found.iloc[0].layer, 30)}` ({found.iloc[0]['check']}): {_cell(found.iloc[0].detail, 140)}")
        lines.append(f"| `{name}` | {_cell(rst(reproduced), 400)} | {rst(planted)} | {example} |")
    return "\n".join(lines)


MARKERS = {"<!-- cli-reference -->": cli_reference, "<!-- check-catalogue -->": check_catalogue,
           "<!-- diagnosis-catalogue -->": diagnosis_catalogue}


def on_page_markdown(markdown, page, config, files):
    for marker, make in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
