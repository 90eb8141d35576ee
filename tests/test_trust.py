"""trust.py: which model ids may run their own modeling code. The rule from the outside (a load refused before
anything runs) is a guarantee in test_hostile_inputs.py; here its parts: paths, the setting, the message."""

from __future__ import annotations

import pytest

from dlm_triage import trust


@pytest.mark.parametrize("model_id, local", [
    ("/abs/ckpt", True), ("./ckpt", True), ("../ckpt", True), ("~/ckpt", True), ("ckpt", True),
    ("a/b/c", True), ("GSAI-ML/LLaDA-8B-Instruct", False), ("attacker/model", False),
])
def test_a_path_is_told_from_a_hub_id(model_id, local):
    assert trust.is_local_path(model_id) is local


def test_an_existing_org_name_path_is_local(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert trust.is_local_path("org/name") and trust.is_trusted("org/name")


def test_the_setting_is_read_at_each_call_and_star_trusts_any(monkeypatch):
    monkeypatch.setenv(trust.TRUSTED_MODELS_ENV, " a/b ,, c/* ")
    assert trust.extra_trusted() == ("a/b", "c/*")
    assert trust.is_trusted("c/anything") and not trust.is_trusted("cc/x")
    monkeypatch.setenv(trust.TRUSTED_MODELS_ENV, "*")
    assert trust.is_trusted("attacker/model")
    monkeypatch.delenv(trust.TRUSTED_MODELS_ENV)
    assert trust.extra_trusted() == () and not trust.is_trusted("attacker/model")
    assert not trust.is_trusted("GSAI-ML/LLaDA-8B-Instruct", defaults=frozenset())  # the defaults are the list


def test_a_refusal_names_the_family_the_id_and_the_fix(monkeypatch):
    monkeypatch.delenv(trust.TRUSTED_MODELS_ENV, raising=False)
    trust.check_trusted("dream", "Dream-org/Dream-v0-Base-7B")  # a known checkpoint: no error
    with pytest.raises(trust.UntrustedModelError, match=r"family 'llada': model_id='attacker/model' .*"
                       r"add it to DLM_TRIAGE_TRUSTED_MODELS") as e:
        trust.check_trusted("llada", "attacker/model")
    assert isinstance(e.value, ValueError) and "local directory" in str(e.value)
