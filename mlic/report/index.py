"""The report of a suite folder: `collect()` (one row per run) and `write_index()` (`index.md`, `index.html`).

The index opens with the claims ledger where the suite built one (a run that recorded a `claims` table), then the
overview of every run, the failures, and each run's tables and figures. Only a run whose last execution succeeded
shows results and figures: those a failed, interrupted or running execution left behind are an earlier run's.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from mlic.core import paths
from mlic.core.io import atomic_write_json, atomic_write_text
from mlic.report.notebook import STATUS_FILE
from mlic.report.results import RESULTS_FILE
from mlic.runs import metric_columns

_UNLISTED_PARAMETERS = {"output_dir", "data_root", "device", "progress", "suite_dir"}


def collect(suite_dir: str | Path, *, prefix: str | None = None, running: bool = False) -> pd.DataFrame:
    """One row per run (optionally only runs whose name starts with `prefix`): status, seconds, the notebook's
    parameters as `param/<name>`, the seed, the recorded headline metrics as `<split>/<metric>` and every
    method's as `<method>:<split>/<metric>` (a run's results are read only if its last execution succeeded).

    Runs still executing (status `running`: a summarising notebook itself, or runs a killed runner left) are left
    out unless `running`; the index lists them.
    """
    rows = []
    for status_file in sorted(paths.resolve(suite_dir).glob(f"*/{STATUS_FILE}")):
        run_dir = status_file.parent
        if prefix is not None and not run_dir.name.startswith(prefix):
            continue
        status = json.loads(status_file.read_text())
        if status.get("status") == "running" and not running:
            continue
        row: dict[str, Any] = {"run": run_dir.name, "notebook": status.get("notebook"),
                               "status": status.get("status"), "seconds": status.get("seconds")}
        row.update({f"param/{k}": v for k, v in (status.get("parameters") or {}).items()
                    if k not in _UNLISTED_PARAMETERS and isinstance(v, (int, float, str, bool))})
        results_file = run_dir / RESULTS_FILE
        if results_file.exists() and row["status"] == "ok":
            results = json.loads(results_file.read_text())
            row["seed"] = results.get("seed")
            row.update(metric_columns(results.get("metrics", {})))
            for method, values in (results.get("methods") or {}).items():
                row.update({f"{method}:{column}": value for column, value in metric_columns(values).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(frame: pd.DataFrame, *, digits: int = 2) -> str:
    """A GitHub-flavoured markdown table of `frame` (floats rounded)."""
    if frame.empty:
        return "_(empty)_"
    cols = [str(c) for c in frame.columns]
    fmt = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


_OVERVIEW_SPLITS = ("test", "test_bg", "test_cooc", "test_shift")
_OVERVIEW_COLUMNS = ("run", "notebook", "status", "seconds", "seed",
                     *(f"{split}/{metric}" for metric in ("mAP", "CF1", "OF1") for split in _OVERVIEW_SPLITS))


def write_index(suite_dir: str | Path, *, wall_seconds: float | None = None) -> Path:
    """Write `index.md` and `index.html` for a suite folder; returns the markdown path.

    `timings.json` lists each run's seconds, their sum, and (from `run_suite`) the wall time of the last call.
    """
    suite_dir = Path(suite_dir)
    summary = collect(suite_dir, running=True)
    md = [f"# Report: {suite_dir.name}", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.", ""]
    body = [f"<h1>Report: {html.escape(suite_dir.name)}</h1>"]
    failures = summary[summary["status"] != "ok"] if not summary.empty else summary
    atomic_write_text(suite_dir / "runs.csv", summary.to_csv(index=False))
    ledger_md, ledger_html = _claims_section(suite_dir, summary)
    md += ledger_md
    body += ledger_html
    overview = summary[[c for c in _OVERVIEW_COLUMNS if c in summary.columns]]
    md += ["## Runs", "", markdown_table(overview), "",
           "Every parameter and metric of every run: [runs.csv](runs.csv).", ""]
    body += ["<h2>Runs</h2>", overview.to_html(index=False, float_format=lambda v: f"{v:.2f}", na_rep=""),
             "<p>Every parameter and metric of every run: <a href='runs.csv'>runs.csv</a>.</p>"]
    if not failures.empty:
        md += ["## Failures", ""]
        body += ["<h2>Failures</h2><ul>"]
        for run in failures["run"]:
            status = json.loads((suite_dir / run / STATUS_FILE).read_text())
            md.append(f"- **{run}** (cell {status.get('cell')}): `{status.get('error')}`")
            body.append(f"<li><b>{html.escape(run)}</b> (cell {status.get('cell')}): "
                        f"<code>{html.escape(str(status.get('error')))}</code></li>")
        md.append("")
        body.append("</ul>")
    timings = {row["run"]: row["seconds"] for _, row in summary.iterrows()} if not summary.empty else {}
    if wall_seconds is None and (suite_dir / "timings.json").exists():  # `mlic report` keeps the run's wall time
        wall_seconds = json.loads((suite_dir / "timings.json").read_text()).get("wall_seconds_last_call")
    atomic_write_json(suite_dir / "timings.json", {"runs": timings, "total_seconds": sum(timings.values()),
                                                    "wall_seconds_last_call": wall_seconds})
    for run_dir in sorted(p.parent for p in suite_dir.glob(f"*/{STATUS_FILE}")):
        md_run, html_run = _run_section(suite_dir, run_dir)
        md += md_run
        body += html_run
    atomic_write_text(suite_dir / "index.md", "\n".join(md) + "\n")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>mlic report</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style></head><body>"
            + "\n".join(body) + "</body></html>")
    atomic_write_text(suite_dir / "index.html", page)
    return suite_dir / "index.md"


#: the ledger's columns shown in the index (claims.csv has them all)
_LEDGER_COLUMNS = ("claim", "source", "split", "metric", "delta", "ci_low", "ci_high", "n_seeds", "verdict")


def _claims_section(suite_dir: Path, summary: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The claims ledger of the suite's last successful run that recorded one (table `claims`), with its forest
    plot: what the suite found, before how it got there."""
    if summary.empty:
        return [], []
    for run in reversed(list(summary.loc[summary["status"] == "ok", "run"])):
        table = suite_dir / run / "tables" / "claims.csv"
        if not table.exists():
            continue
        ledger = pd.read_csv(table)
        shown = ledger[[c for c in _LEDGER_COLUMNS if c in ledger.columns]]
        note = (f"Each row is one claim of the source papers: `delta` is the measured difference (in points) with "
                f"its 95% interval over seeds and test images; *reproduced* or *refuted* only where the whole interval "
                f"lies on one side of the claim's bound, *inconclusive* otherwise. From run [{run}]({run}/); every "
                f"column: [{run}/tables/claims.csv]({run}/tables/claims.csv).")
        md = ["## Claims ledger", "", markdown_table(shown), "", note, ""]
        body = ["<h2>Claims ledger</h2>", shown.to_html(index=False, float_format=lambda v: f"{v:.2f}", na_rep=""),
                f"<p>{html.escape(note)}</p>"]
        for figure in sorted((suite_dir / run / "figures").glob("claims*.png")):
            rel = figure.relative_to(suite_dir)
            md += [f"![{figure.stem}]({rel})", ""]
            body.append(f"<figure><img src='{rel}' alt='{figure.stem}'></figure>")
        return md, body
    return [], []


def _run_section(suite_dir: Path, run_dir: Path) -> tuple[list[str], list[str]]:
    status = json.loads((run_dir / STATUS_FILE).read_text())
    rel = run_dir.relative_to(suite_dir)
    nb = rel / Path(status.get("notebook", "")).name
    md = [f"## {run_dir.name}", "", f"Notebook: [{nb}]({nb}) — status **{status.get('status')}**, "
          f"{status.get('seconds', 0):.0f} s.", ""]
    body = [f"<h2>{html.escape(run_dir.name)}</h2>",
            f"<p>Notebook: <a href='{nb}'>{nb}</a> — status <b>{status.get('status')}</b>, "
            f"{status.get('seconds', 0):.0f} s.</p>"]
    results_file = run_dir / RESULTS_FILE
    if status.get("status") != "ok":  # what is in the folder is an earlier execution's, not this one's
        if results_file.exists() or list((run_dir / "figures").glob("*.png")):
            note = ("Its results and figures are not shown: this execution did not finish, so those in its folder "
                    "are an earlier execution's (or incomplete).")
            md += [f"_{note}_", ""]
            body.append(f"<p><i>{html.escape(note)}</i></p>")
        return md, body
    if results_file.exists():
        results = json.loads(results_file.read_text())
        vers = ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items())
        md += [f"Seed {results.get('seed')}; {vers}.", ""]
        body.append(f"<p>Seed {results.get('seed')}; {html.escape(vers)}.</p>")
        for table_name in results.get("tables", []):
            frame = pd.read_csv(run_dir / "tables" / f"{table_name}.csv")
            md += [f"### {table_name}", "", markdown_table(frame), ""]
            body += [f"<h3>{html.escape(table_name)}</h3>",
                     frame.to_html(index=False, float_format=lambda v: f"{v:.2f}", na_rep="")]
    for figure in sorted((run_dir / "figures").glob("*.png")):
        fig_rel = figure.relative_to(suite_dir)
        md += [f"![{figure.stem}]({fig_rel})", ""]
        body.append(f"<figure><img src='{fig_rel}' alt='{figure.stem}'><figcaption>{figure.stem}</figcaption>"
                    "</figure>")
    return md, body
