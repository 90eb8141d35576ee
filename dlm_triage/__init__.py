"""dlm-triage: LoRA/PEFT fine-tuning of masked diffusion LMs with calibrated max-grad triage.

The core package imports no Prefect: models, objective, monitors, statistics and storage live here;
`tasks/` and `flows/` are the thin Prefect shell over it.
"""

__version__ = "0.1.0"
