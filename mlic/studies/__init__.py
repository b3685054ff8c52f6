"""The studies' logic, one module each, every one on `mlic.runs.run_grid`: heads, AAM, CPSD, mixture of experts,
single positive labels, the co-occurrence shift (import the one you need: `from mlic.studies import moe`)."""
