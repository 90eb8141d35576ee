"""The group key: which calibration group a run belongs to, in one place.

Calibration, the threshold registry, the inspection queue, the report and scheduled recalibration all name a
run's group with `group_keys` / `group_key` (a polars expression, `group_key_expr`), never with SQL of their own:

- `group_by` picks the column: family -> `family`, model -> `model_id`, cohort -> `cohort`, method -> `method`,
  objective -> `objective`
  (`GROUP_BY_COLUMNS`);
- the value as text; a family compares case-insensitively and is spelled in lower case ("LLaDA" and "llada" are
  one group, named "llada", the spelling of `config.FAMILIES`);
- NULL and the empty string are one group, named `NULL_GROUP` ('<null>'): a cohort never set is stored as ''
  by the trainer and may be NULL from an import, and both must land in the same group everywhere.

Prefect-free; no torch.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import polars as pl

__all__ = ["GROUP_BY_COLUMNS", "NULL_GROUP", "group_column", "group_key_expr", "group_keys", "group_key",
           "with_group", "runs_with_groups", "runs_since_calibration", "group_run_ids"]

GROUP_BY_COLUMNS: dict[str, str] = {"family": "family", "model": "model_id", "cohort": "cohort", "method": "method",
                                   "objective": "objective"}
"""--group-by value -> the `runs` column it reads."""
CASE_INSENSITIVE = frozenset({"family"})
"""Groupings whose values compare case-insensitively (spelled in lower case)."""
NULL_GROUP = "<null>"
"""The name of the group of runs without a value (NULL or '')."""


def group_column(group_by: str) -> str:
    """The `runs` column `group_by` reads; ValueError naming the choices for an unknown one."""
    try:
        return GROUP_BY_COLUMNS[group_by]
    except (KeyError, TypeError):
        raise ValueError(f"group_by={group_by!r} is not known: use one of {sorted(GROUP_BY_COLUMNS)}") from None


def group_key_expr(group_by: str) -> pl.Expr:
    """The group key of each row as a polars String expression (the module docstring's rules)."""
    v = pl.col(group_column(group_by)).cast(pl.String)
    if group_by in CASE_INSENSITIVE:
        v = v.str.to_lowercase()
    return pl.when(v.is_null() | (v == "")).then(pl.lit(NULL_GROUP)).otherwise(v)


def group_keys(df: pl.DataFrame, group_by: str) -> pl.Series:
    """The group key of every row of `df` (which holds the column `group_by` reads)."""
    col = group_column(group_by)
    if col not in df.columns:
        raise ValueError(f"group_by={group_by!r} reads column {col!r}, which the runs table lacks")
    return df.select(group_key_expr(group_by).alias("group")).to_series()


def group_key(group_by: str, value: Any) -> str:
    """The group key of one value (e.g. a run's family, or a name a user typed)."""
    col = group_column(group_by)
    return group_keys(pl.DataFrame({col: [None if value is None else str(value)]}, schema={col: pl.String}),
                      group_by)[0]


def with_group(df: pl.DataFrame, group_by: str, name: str = "group") -> pl.DataFrame:
    """`df` plus a column `name` holding each row's group key."""
    return df.with_columns(group_key_expr(group_by).alias(name))


def _pl(con, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
    return con.sql(sql, params=list(params)).pl() if params else con.sql(sql).pl()


def runs_with_groups(con, group_by: str, columns: Iterable[str] = ("run_id",)) -> pl.DataFrame:
    """`columns` of every stored run plus `group` (its key under `group_by`)."""
    cols = list(dict.fromkeys([*columns, group_column(group_by)]))
    df = _pl(con, f"SELECT {', '.join(cols)} FROM runs ORDER BY run_id")
    return with_group(df, group_by)


def group_run_ids(con, group_by: str, names: Iterable[str]) -> list[str]:
    """The run ids of the groups `names` (group keys, or raw values: they are keyed first)."""
    keys = {group_key(group_by, n) for n in names}
    df = runs_with_groups(con, group_by)
    return df.filter(pl.col("group").is_in(sorted(keys)))["run_id"].to_list()


def runs_since_calibration(con, group_by: str) -> dict[str, dict[str, Any]]:
    """{group: {total, new, last_calibrated_at}}: runs ingested since the group's last stored threshold under
    `group_by` (any run status; a group never calibrated counts all its runs as new)."""
    runs = runs_with_groups(con, group_by, ("run_id", "ingested_at"))
    last = _pl(con, "SELECT group_name AS \"group\", max(created_at) AS last_at FROM thresholds "
                    "WHERE group_by = ? GROUP BY group_name", [group_by])
    if last.height == 0:
        last = pl.DataFrame(schema={"group": pl.String, "last_at": runs.schema.get("ingested_at", pl.Datetime)})
    joined = runs.join(last, on="group", how="left")
    agg = joined.group_by("group").agg(
        pl.len().alias("total"),
        (pl.col("last_at").is_null() | (pl.col("ingested_at") > pl.col("last_at"))).sum().alias("new"),
        pl.col("last_at").first().alias("last_at"),
    ).sort("group")
    return {r["group"]: {"total": int(r["total"]), "new": int(r["new"]),
                         "last_calibrated_at": None if r["last_at"] is None else str(r["last_at"])}
            for r in agg.iter_rows(named=True)}


def due_groups(counts: Mapping[str, Mapping[str, Any]], min_new_runs: int) -> list[str]:
    """The groups of `runs_since_calibration` with at least `min_new_runs` new runs."""
    return [g for g, info in counts.items() if info["new"] >= min_new_runs]
