"""Example job modules: list `examples.report_jobs` in TASKQ_JOB_MODULES to run them."""
