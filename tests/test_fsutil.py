"""fsutil.py: atomic writes (a failed write leaves the old file and no temp file), the one NaN/Inf -> null
conversion, and the per-output folders with their `latest` pointer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dlm_triage.fsutil import (LATEST_NAME, finite_or_none, json_safe, output_dir, point_latest, write_bytes_atomic,
                               write_json_atomic)


def test_atomic_write_replaces_the_file_and_creates_its_folder(tmp_path):
    p = write_json_atomic({"a": [1, 2.5]}, tmp_path / "new" / "x.json")
    assert p == tmp_path / "new" / "x.json" and json.loads(p.read_text()) == {"a": [1, 2.5]}
    write_json_atomic({"a": 3}, p)
    assert json.loads(p.read_text()) == {"a": 3}
    assert sorted(q.name for q in p.parent.iterdir()) == ["x.json"]


def test_a_failing_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    p = write_bytes_atomic(tmp_path / "x.bin", b"old")
    with pytest.raises(TypeError):
        write_bytes_atomic(p, "not bytes")  # fails while writing the temp file
    with pytest.raises(ValueError, match="JSON compliant"):
        write_json_atomic({"loss": float("nan")}, p)  # undefined numbers must already be null
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["x.bin"]


def test_json_safe_maps_nonfinite_to_none_and_reports_where():
    seen = []
    got = json_safe({"g": {"llada": (1.0, float("nan"))}, "rows": [float("inf"), -float("inf"), 2], 3: None},
                    on_nonfinite=lambda path, v: seen.append((path, v)))
    assert got == {"g": {"llada": [1.0, None]}, "rows": [None, None, 2], "3": None}
    assert [p for p, _ in seen] == ["g.llada[1]", "rows[0]", "rows[1]"]
    assert math.isnan(seen[0][1]) and seen[1][1] == math.inf and seen[2][1] == -math.inf
    json.dumps(got, allow_nan=False)


def test_json_safe_converts_numpy_and_torch_and_leaves_the_rest_to_default():
    got = json_safe({"a": np.array([1.5, np.nan]), "b": np.float32(np.inf), "c": np.int64(7), "t": torch.tensor(2.0),
                     "flag": np.bool_(True)})
    assert got == {"a": [1.5, None], "b": None, "c": 7, "t": 2.0, "flag": True}
    assert type(got["c"]) is int and type(got["flag"]) is bool
    obj = object()
    assert json_safe([obj]) == [obj]  # without a default, left as it is
    assert json_safe([obj], default=lambda o: "converted") == ["converted"]


@pytest.mark.parametrize("x, expected", [(1, 1.0), ("2.5", 2.5), (None, None), (True, None), ("n/a", None),
                                         (float("nan"), None), ("inf", None), ([1], None)])
def test_finite_or_none(x, expected):
    assert finite_or_none(x) == expected


def test_output_dir_takes_only_a_plain_folder_name(tmp_path):
    assert output_dir(tmp_path, "cal-20261201-ab12") == tmp_path / "cal-20261201-ab12"
    for bad in ("..", ".", "../x", "a/b", "", LATEST_NAME, "-x"):
        with pytest.raises(ValueError, match="not a plain folder name"):
            output_dir(tmp_path, bad)


def test_point_latest_moves_to_the_newest_output_and_refuses_a_real_folder(tmp_path):
    for oid in ("cal-1", "cal-2"):
        output_dir(tmp_path, oid).mkdir()
        link = point_latest(tmp_path, oid)
        assert link == tmp_path / LATEST_NAME and link.is_symlink() and link.resolve() == (tmp_path / oid).resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal-1", "cal-2", LATEST_NAME]  # no temp link left
    other = tmp_path / "other"
    (other / LATEST_NAME).mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a symlink"):
        point_latest(other, "cal-1")
