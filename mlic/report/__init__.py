"""Suites of notebooks under papermill, and the report they leave in `reports/<suite>/`.

- `record(output_dir, ...)` (`results`): a notebook's last cell; writes `results.json` (metrics, values, versions,
  seed) and tables as CSV, which the report collects.
- `run_suite(suite_file)` (`runner`): executes every run of a suite YAML (`suite`: each grid point is one run, in its
  own folder) on an executor (`executors`: local threads; `dask_cluster`: a Dask cluster), through the one
  scheduling function (`schedule`: skip what succeeded, summaries last, every outcome recorded); a failure is
  recorded with the failing cell and the others go on. Ctrl-C stops the notebooks that are running and still writes
  the index of what finished.
- `write_index(suite_dir)` and `collect(suite_dir)` (`index`): the claims ledger first, then every run's figures
  and tables, the executed notebooks, versions and seeds, timings and failures.

Every parameter an entry sets (its `parameters` and `grid`) must be one its notebook declares, or the suite fails
before anything runs, naming the entry and the parameter. The suite's `defaults` and the `--set` overrides go to
each notebook that declares them, and must be declared by at least one.
"""

from mlic.report.index import collect, markdown_table, write_index
from mlic.report.notebook import STATUS_FILE
from mlic.report.results import RESULTS_FILE, record, versions
from mlic.report.runner import run_suite
from mlic.report.schedule import SuiteResult
from mlic.report.suite import SuiteRun, check_parameters, load_suite

__all__ = ["RESULTS_FILE", "STATUS_FILE", "SuiteResult", "SuiteRun", "check_parameters", "collect", "load_suite",
           "markdown_table", "record", "run_suite", "versions", "write_index"]
