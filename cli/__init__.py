"""`dlm-triage`, the command line: orchestration, beside `tasks/` and `flows/` (the core `dlm_triage` imports no
Prefect and no flows; `run` and `sweep` here start flows). The console script is `cli.main:main`."""
