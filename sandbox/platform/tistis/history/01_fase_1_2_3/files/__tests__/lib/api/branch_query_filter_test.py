"""FASE 1: the parts of the branch filter that need no database (run with pytest from the
repository's root)."""

from __future__ import annotations

from src.lib.api.branch_query_filter import is_uuid
from src.shared.lib.api_key_auth import requested_branch_id


def test_a_blank_branch_id_is_no_filter() -> None:
    assert requested_branch_id({}) is None
    assert requested_branch_id({"branch_id": "  "}) is None


def test_the_branch_id_is_trimmed() -> None:
    assert requested_branch_id({"branch_id": " 6f1c2a9e-0b7d-4c61-9a55-2f3d8e1b7c40 "}) == (
        "6f1c2a9e-0b7d-4c61-9a55-2f3d8e1b7c40"
    )


def test_only_uuids_are_branch_ids() -> None:
    assert is_uuid("6f1c2a9e-0b7d-4c61-9a55-2f3d8e1b7c40")
    assert not is_uuid("branch-1")
    assert not is_uuid("6f1c2a9e0b7d4c619a552f3d8e1b7c40")
