"""FASE 3's objects as a run context names them (labels) and a function's argument count: the
pure parts of the one lookup the driver and the checks share (`inspect_object`; against a real
catalog in tests/test_fase3_lookup.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollback.actions.fase3_objects import argument_count
from rollback.fase3 import RELATION, DbObject


@pytest.mark.parametrize(("label", "kind", "name", "args"), [
    ("idx_leads_branch_search", RELATION, "idx_leads_branch_search", ""),
    ("public.vw_cache_freshness", RELATION, "public.vw_cache_freshness", ""),
    ("get_low_stock_items(uuid, uuid)", "function", "get_low_stock_items", "uuid, uuid"),
    ("public.refresh_branch_performance_metrics()", "function",
     "public.refresh_branch_performance_metrics", ""),
    ("f(numeric(10, 2))", "function", "f", "numeric(10, 2)"),
    ("vw_x'); DELETE FROM leads; --", RELATION, "vw_x'); DELETE FROM leads; --", ""),
    ("odd(name", RELATION, "odd(name", ""),  # no closing parenthesis: not a function's label
])
def test_a_label_names_a_function_by_its_arguments_else_a_relation(label: str, kind: str,
                                                                   name: str, args: str) -> None:
    assert DbObject.from_label(label) == DbObject(kind, name, args)


@settings(deadline=None, database=None)
@given(st.sampled_from(["index", "view", "materialized view", "function"]),
       st.from_regex(r"[a-z_][a-z0-9_]{0,20}(\.[a-z_][a-z0-9_]{0,20})?", fullmatch=True),
       st.lists(st.sampled_from(["uuid", "integer", "text", "numeric(10, 2)", "timestamp with time zone"]),
                max_size=4))
def test_a_label_names_its_object_again(kind: str, name: str, args: list[str]) -> None:
    obj = DbObject(kind, name, ", ".join(args) if kind == "function" else "")
    again = DbObject.from_label(obj.label)
    assert again.label == obj.label
    assert again.kind == (kind if kind == "function" else RELATION)
    assert (again.name, again.args) == (obj.name, obj.args)


@pytest.mark.parametrize(("args", "count"), [
    ("", 0), ("   ", 0), ("uuid", 1), ("uuid, uuid", 2), ("uuid,uuid,integer", 3),
    ("numeric(10, 2)", 1), ("numeric(10, 2), character varying(20)", 2),
    ("integer[], text", 2), ("f(g(1, 2), 3), x", 2),
])
def test_an_argument_list_counts_its_top_level_arguments(args: str, count: int) -> None:
    assert argument_count(args) == count
