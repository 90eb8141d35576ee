"""params/: the flow parameters as the Prefect UI forms show them: ranges in the JSON schema (list items
included), one db/out/runs_dir for the pipeline, fields grouped in the order the form shows them, and an
out-of-range value refused by the server before a flow run exists (a deployment enforces its parameter schema, as
the UI's "Run" form submits it); and the sweep's grid validated once on its way to the configs."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest


def _form(flow) -> dict:
    from prefect.utilities.callables import parameter_schema

    return parameter_schema(flow).model_dump_for_openapi()


def _pipeline_form() -> dict:
    from flows.pipeline import pipeline_flow

    return _form(pipeline_flow)


def test_pipeline_form_has_one_set_of_paths_and_ranges_on_every_list_item():
    form = _pipeline_form()
    defs = form["definitions"]
    top = defs["PipelineParams"]["properties"]
    assert list(top)[:3] == ["db", "out", "runs_dir"] and {"sweep", "ingest", "calibrate"} <= set(top)
    assert "report" not in top  # the pipeline reports the calibration it makes: nothing to set
    for name, d in defs.items():  # the paths appear once, at the top: not again in every stage
        if name != "PipelineParams":
            assert not {"db", "out", "runs_dir"} & set(d["properties"]), name
    sweep = defs["SweepGrid"]["properties"]
    assert sweep["mask_ratios"]["items"] == {"type": "number", "exclusiveMinimum": 0.0, "exclusiveMaximum": 1.0}
    assert sweep["ranks"]["items"] == {"type": "integer", "minimum": 1, "maximum": 4096}
    assert sweep["learning_rates"]["items"] == {"type": "number", "exclusiveMinimum": 0.0, "maximum": 10.0}
    assert sweep["seeds"]["items"] == {"type": "integer", "minimum": 0}
    assert defs["CalibrateOptions"]["properties"]["ks"]["items"] == {"type": "integer", "minimum": 0}
    assert sweep["steps"]["minimum"] == 1 and defs["CalibrateOptions"]["properties"]["test_size"][
        "exclusiveMaximum"] == 1.0
    # grouped: the grid first, then training, the early warning, where it runs; each title names its group
    titles = [p["title"] for p in sweep.values()]
    groups = [t.split(":")[0] for t in titles]
    assert groups[:6] == ["Grid"] * 6 and titles[0] == "Grid: Families"
    order = list(dict.fromkeys(groups))
    assert order[:4] == ["Grid", "Training", "Early warning", "Where it runs"], order
    # every field keeps its help text (the form shows it under the field)
    assert all(p.get("description") for p in sweep.values())


@pytest.mark.parametrize("where, value", [
    (("sweep", "mask_ratios"), [0.5, 1.5]),
    (("sweep", "ranks"), [0]),
    (("sweep", "learning_rates"), [0.0]),
    (("sweep", "seeds"), [-1]),
    (("calibrate", "ks"), [5, -1]),
])
def test_an_out_of_range_form_value_fails_the_schema_and_the_model(where, value):
    from dlm_triage.params import PipelineParams

    form = _pipeline_form()
    good = {"params": {"sweep": {"mask_ratios": [0.5]}}}
    jsonschema.validate(good, form)
    bad = copy.deepcopy(good)
    bad["params"].setdefault(where[0], {})[where[1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, form)
    with pytest.raises(ValueError, match=where[1]):  # the same refusal in Python (CLI, flow call), naming the field
        PipelineParams.model_validate(bad["params"])


def test_sweep_form_carries_the_same_item_ranges():
    from flows.sweep import sweep_flow

    props = _form(sweep_flow)["definitions"]["SweepParams"]["properties"]
    assert props["mask_ratios"]["items"]["exclusiveMaximum"] == 1.0 and props["runs_dir"]["title"].startswith(
        "Where it runs")


def test_a_deployment_refuses_mask_ratio_1_5_before_a_run_is_created(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.exceptions import PrefectHTTPStatusError

    form = _pipeline_form()
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("pipeline")
        dep_id = client.create_deployment(flow_id, "form-check", entrypoint="flows/pipeline.py:pipeline_flow",
                                          parameter_openapi_schema=form, enforce_parameter_schema=True)
        with pytest.raises(PrefectHTTPStatusError) as e:
            client.create_flow_run_from_deployment(dep_id, parameters={"params": {"sweep": {"mask_ratios": [1.5]}}})
        assert e.value.response.status_code in (409, 422)
        assert "1.5" in json.dumps(e.value.response.json())
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])))
        assert runs == []  # refused before any run exists: nothing fails later with a traceback
        ok = client.create_flow_run_from_deployment(dep_id, parameters={"params": {"sweep": {"mask_ratios": [0.5]}}})
        assert ok.state.is_scheduled()
        client.delete_flow_run(ok.id)


def test_a_sweep_validates_each_run_config_once_between_the_command_line_and_its_configs(monkeypatch):
    """`SweepParams` validates the grid (every RunConfig) once; `to_spec().expand()`, which the CLI and the sweep's
    plan call, hands on those frozen configs instead of validating them again."""
    from dlm_triage import config
    from dlm_triage.params import SweepParams

    calls = []
    real = config._validate_run
    monkeypatch.setattr(config, "_validate_run", lambda c: calls.append(c.run_id) or real(c))
    sweep = SweepParams(ranks=[4, 8], mask_ratios=[0.5], learning_rates=[1e-3], seeds=[1, 2], steps=2)
    configs = sweep.to_spec().expand()
    assert sweep.to_spec().expand() == configs
    assert len(configs) == 4 and sorted(calls) == sorted(c.run_id for c in configs)  # once each (was 1 + 2 per call)
    pinned = sweep.model_copy(update={"steps": 3})  # an unvalidated copy gets its own spec, not the kept one
    assert {c.steps for c in pinned.to_spec().expand()} == {3}
    sweep.steps = 5  # validate_assignment validates the grid again
    assert {c.steps for c in sweep.to_spec().expand()} == {5}
