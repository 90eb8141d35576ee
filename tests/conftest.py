"""Shared test fixtures. Add fixtures here; don't rewrite others'."""

from __future__ import annotations

import pytest
import torch

TINY_PRETRAIN_STEPS = 40
"""Few pretraining steps: enough for a model that is not random, cheap enough (~4 s) for every test session."""


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny family's model (HF format + tokenizer), pretrained briefly, built once per test session."""
    from dlm_triage.tiny import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("tiny-cache"), pretrain_steps=TINY_PRETRAIN_STEPS)
