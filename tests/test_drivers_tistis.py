"""The drivers on the real platform's shape: FASE 1, 2 and 3 shipped in ONE commit, so each
run takes back only its own phase's files and hunks (the profile's phase manifest), deploys
through the stand-in `vercel`, and proves through the API that the other phases still work."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Sandbox, SandboxFactory
from tests.targets import Target, git, make_target

# each test runs whole rollbacks (a build, a deploy, a gate): bounded wide, for a loaded machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PHASE_SUBJECT = "^feat: FASE 1, 2 & 3 Complete"


@pytest.fixture
def tistis(sandbox_factory: SandboxFactory, tmp_path: Path) -> Iterator[Target]:
    box = sandbox_factory.make(shape="tistis")
    yield make_target(box, tmp_path / "t")
    sandbox_factory.destroy(box)


def _leads(box: Sandbox, key: str, **params: str) -> httpx.Response:
    response = httpx.get(f"{box.api_base_url}/api/v1/leads", params={"pageSize": 1, **params},
                         headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert response.status_code == 200, response.text
    return response


def _count(box: Sandbox, where: str = "") -> int:
    return int(box.sql(f"SELECT count(*) FROM leads WHERE tenant_id = %s {where}",
                       (box.tenant_id,))[0][0])


def _branch_of_branch_key(box: Sandbox) -> str:
    return str(box.sql("SELECT branch_id FROM api_keys WHERE name = 'Sandbox branch test key'")[0][0])


def _files_changed(box: Sandbox) -> set[str]:
    return set(git(box.repo, "show", "--name-only", "--format=", "HEAD").split())


def _phase_commit(box: Sandbox) -> str:
    return git(box.repo, "log", "--format=%H", f"--grep={PHASE_SUBJECT}")


def _run(target: Target, *args: str) -> subprocess.CompletedProcess[str]:
    done = target.rollback("run", *args, "--yes", timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return done


def test_fase3_then_2_then_1_each_take_back_only_their_phase(tistis: Target) -> None:
    box = tistis.box
    key, branch_key = box.keys["tenant"], box.keys["branch"]
    own_branch = _branch_of_branch_key(box)
    phase_commit = _phase_commit(box)

    # FASE 3, option 2: the cache and the objects go; FASE 2's branch keys still hold
    _run(tistis, "fase3", "--db-option", "2")
    assert _files_changed(box) == {"app/api/analytics/branch_usage/route.py",
                                   "app/api/v1/leads/route.py",
                                   "docs/api/FASE_3_COMPLETION_REPORT.md",
                                   "src/shared/lib/api_deprecation.py",
                                   "src/shared/lib/branch_filter_cache.py"}
    before = _leads(box, key).json()["total"]
    box.sql("INSERT INTO leads (tenant_id, branch_id, phone, full_name) VALUES (%s, %s, %s, %s)",
            (box.tenant_id, box.branch_id, "+520000000009", "written behind the API"))
    assert _leads(box, key).json()["total"] == before + 1  # no cache serves the old total
    assert box.sql("SELECT count(*) FROM pg_matviews WHERE matviewname = "
                   "'mv_branch_performance_metrics'")[0][0] == 0
    assert _leads(box, branch_key).json()["total"] == _count(box, f"AND branch_id = '{own_branch}'")
    assert "Rollback-Phase-Reverted: fase3 " + phase_commit in git(box.repo, "log", "-1", "--format=%B")

    # FASE 2: the former branch key reads every branch; FASE 1's filter still answers
    _run(tistis, "fase2")
    assert _files_changed(box) >= {"app/api/v1/leads/route.py", "src/shared/lib/api_key_auth.py"}
    assert "src/lib/api/branch_query_filter.py" not in _files_changed(box)
    assert box.sql("SELECT count(*) FROM api_keys WHERE scope_type = 'branch'")[0][0] == 0
    assert _leads(box, branch_key).json()["total"] == _count(box)
    filtered = _leads(box, key, branch_id=own_branch)
    assert filtered.headers.get("X-Filtered-Branch-ID") == own_branch
    assert filtered.json()["total"] == _count(box, f"AND branch_id = '{own_branch}'")

    # FASE 1: the parameter is ignored again, with no FASE 1 header
    _run(tistis, "fase1")
    legacy = _leads(box, key, branch_id=own_branch)
    assert "X-Filtered-Branch-ID" not in legacy.headers
    assert "X-Branch-Filter-Warning" not in _leads(box, key).headers
    assert legacy.json()["total"] == _count(box)
    # the phase commit itself is still in history: each phase was taken back on its own
    body = git(box.repo, "log", "--format=%B", f"{phase_commit}..HEAD")
    for phase in ("fase1", "fase2", "fase3"):
        assert f"Rollback-Phase-Reverted: {phase} {phase_commit}" in body
    assert "This reverts commit" not in body
    assert [r.state for r in tistis.runs()] == ["succeeded"] * 3
    # the deploy branch, and origin's, carry every revert: the next push to main ships no phase
    assert git(box.repo, "branch", "--show-current") == "main"
    origin = box.dir / "origin.git"
    assert git(origin, "rev-parse", "main") == git(box.repo, "rev-parse", "HEAD")
    published = git(origin, "log", "--format=%B", "main")
    for phase in ("fase1", "fase2", "fase3"):
        assert f"Rollback-Phase-Reverted: {phase} {phase_commit}" in published


def test_a_commit_carrying_other_phases_is_refused_naming_them(tistis: Target) -> None:
    box = tistis.box
    head = git(box.repo, "rev-parse", "HEAD")
    done = tistis.rollback("run", "fase1", "--commit", _phase_commit(box)[:7], "--yes")
    assert done.returncode == 2, done.stdout + done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "carries fase2, fase3 too" in line and "without --commit" in line, line
    assert git(box.repo, "rev-parse", "HEAD") == head and git(box.repo, "status", "--porcelain") == ""


def test_the_plan_names_every_hunk_and_what_stays(tistis: Target) -> None:
    done = tistis.rollback("plan", "fase2")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "take back 1 of 3 hunk(s) in app/api/v1/leads/route.py" in text
    assert '"# FASE 2:' in text and 'stays in place: @@' in text and '"# FASE 1:' in text
    assert "changed since by:" in text
    assert "supabase/migrations/135_ADD_BRANCH_CONTEXT_TO_API_KEYS.sql" in text  # stays


def test_fase2_restore_under_the_real_triggers_and_a_deleted_branch(tistis: Target) -> None:
    box = tistis.box
    _run(tistis, "fase2")
    record = tistis.only_run("fase2")
    backup = record.facts["fase2_backup"]
    table = f'"{backup["schema"]}"."{backup["table"]}"'
    # a branch deleted since the rollback: its key cannot be given that branch back
    gone = str(box.sql(f"SELECT branch_id FROM {table} WHERE name LIKE 'Branch POS integration%' "
                       "ORDER BY id LIMIT 1")[0][0])
    orphan = str(box.sql(f"SELECT id FROM {table} WHERE branch_id = %s ORDER BY id LIMIT 1",
                         (gone,))[0][0])
    box.sql("DELETE FROM branches WHERE id = %s", (gone,))
    restored = tistis.rollback("restore", "fase2", "--run", record.run_id, "--yes")
    assert restored.returncode == 1, restored.stdout + restored.stderr
    line = restored.stderr.strip().splitlines()[-1]
    assert f"{orphan}: Branch {gone} does not exist" in line and "checksum" in line, line
    assert "equals the backup's" in line, line
    # every other key is back on its branch; the triggers rewrote branch_context, consistently
    back = box.sql(f"SELECT count(*) FROM {table} b JOIN api_keys k ON k.id = b.id "
                   "WHERE k.scope_type = 'branch' AND k.branch_id = b.branch_id "
                   "AND k.branch_context->>'branch_id' = b.branch_id::text")[0][0]
    assert back == backup["row_count"] - 1
    assert box.sql("SELECT scope_type, branch_id FROM api_keys WHERE id = %s", (orphan,))[0] == (
        "tenant", None)
    assert "the platform rewrote itself" in restored.stdout


def test_fase2_restore_on_the_real_shape_exits_0(tistis: Target) -> None:
    _run(tistis, "fase2")
    record = tistis.only_run("fase2")
    restored = tistis.rollback("restore", "fase2", "--run", record.run_id, "--yes")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "equals the backup's" in restored.stdout
    assert tistis.box.sql("SELECT count(*) FROM api_keys WHERE scope_type = 'branch'")[0][0] == \
        record.facts["fase2_backup"]["row_count"]


ACLS = ("SELECT c.relname, c.relacl::text, obj_description(c.oid, 'pg_class') FROM pg_class c "
        "WHERE c.relname IN ('mv_branch_performance_metrics', 'vw_cache_freshness', "
        "'vw_fase3_index_usage') UNION ALL SELECT p.proname, p.proacl::text, "
        "obj_description(p.oid, 'pg_proc') FROM pg_proc p WHERE p.proname IN "
        "('get_branch_stats_summary', 'refresh_branch_performance_metrics') ORDER BY 1")


def test_fase3_restore_brings_back_grants_and_comments_exactly(tistis: Target) -> None:
    box = tistis.box
    # grants narrower than the schema's default privileges, and a comment: a recreated object
    # would otherwise get the defaults (anon included) and no comment
    box.sql("REVOKE ALL ON mv_branch_performance_metrics, vw_cache_freshness FROM anon; "
            "REVOKE ALL ON FUNCTION get_branch_stats_summary(uuid, uuid) FROM PUBLIC, anon; "
            "COMMENT ON VIEW vw_cache_freshness IS 'age of the branch metrics'")
    before = box.sql(ACLS)
    narrowed = {name: acl for name, acl, _ in before}
    assert len(before) == 5 and "anon=" not in narrowed["vw_cache_freshness"]
    assert "anon=" in narrowed["vw_fase3_index_usage"]  # the defaults, where not narrowed
    _run(tistis, "fase3", "--db-option", "2")
    assert box.sql(ACLS) == []
    record = tistis.only_run("fase3")
    restored = tistis.rollback("restore", "fase3", "--run", record.run_id, "--yes")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert box.sql(ACLS) == before


def _step_names(target: Target, *args: str) -> list[str]:
    done = target.rollback("plan", *args, "--json")
    assert done.returncode == 0, done.stderr
    return [s["name"] for s in json.loads(done.stdout)["steps"]]


def test_fase2_converts_before_the_deploy_and_fase3_drops_after_it(tistis: Target) -> None:
    fase2 = _step_names(tistis, "fase2")
    assert fase2.index("build") < fase2.index("database") < fase2.index("deploy"), fase2
    fase3 = _step_names(tistis, "fase3", "--db-option", "2")
    assert fase3.index("deploy") < fase3.index("publish") < fase3.index("database"), fase3


def test_whole_commit_takes_every_phase_back_with_each_database_step(tistis: Target) -> None:
    box = tistis.box
    phase_commit = _phase_commit(box)
    args = ("fase1", "--commit", phase_commit[:7], "--whole-commit", "--db-option", "2")
    planned = tistis.rollback("plan", *args)
    assert planned.returncode == 0, planned.stderr
    assert planned.stdout.lstrip().startswith(
        "--whole-commit: this run takes back fase1, fase2, fase3"), planned.stdout[:300]
    names = _step_names(tistis, *args)
    assert names.index("database-fase2") < names.index("deploy") < names.index("database-fase3")

    done = _run(tistis, *args)
    assert "fase1, fase2, fase3 rolled back" in done.stdout
    body = git(box.repo, "log", "-1", "--format=%B", "HEAD")
    assert all(f"Rollback-Phase-Reverted: {p} {phase_commit}" in body
               for p in ("fase1", "fase2", "fase3")), body
    assert box.sql("SELECT count(*) FROM api_keys WHERE scope_type = 'branch'")[0][0] == 0
    assert box.sql("SELECT count(*) FROM pg_matviews WHERE matviewname = "
                   "'mv_branch_performance_metrics'")[0][0] == 0
    record = tistis.only_run("fase1")
    assert record.facts["phases"] == ["fase1", "fase2", "fase3"]
    assert set(record.gate["phases"]) == {"fase1", "fase2", "fase3"}
    assert all(p["passed"] for p in record.gate["phases"].values())
    # the customers hear of every phase, and no message says that keys are untouched
    said = Path(record.facts["communication"]["dir"])
    assert (said / "customer_email_fase1.txt").is_file() and (said / "customer_email_fase3.txt").is_file()
    assert list((said / "customer_emails").glob("*.txt")) and not (said / "customer_email.txt").exists()
    texts = {p.name: p.read_text() for p in said.rglob("*") if p.is_file()}
    assert not [name for name, text in texts.items() if "no API key was modified" in text
                or "No data or key changed" in text], sorted(texts)
    assert "Affected accounts" in texts["cs_briefing.md"] and "branch_id" in texts["cs_briefing.md"]
    # the database parts of the other phases are undone like their own runs' would be
    restored = tistis.rollback("restore", "fase2", "--run", record.run_id, "--yes")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert box.sql("SELECT count(*) FROM api_keys WHERE scope_type = 'branch'")[0][0] == \
        record.facts["fase2_backup"]["row_count"]


def test_keep_deploy_branch_is_said_first_and_leaves_the_deploy_branch(tistis: Target) -> None:
    box = tistis.box
    origin = box.dir / "origin.git"
    main_before = git(origin, "rev-parse", "main")
    planned = tistis.rollback("plan", "fase1", "--keep-deploy-branch")
    assert planned.returncode == 0, planned.stderr
    first = planned.stdout.lstrip().splitlines()[0]
    assert first.startswith("WARNING: --keep-deploy-branch: main keeps fase1"), first
    done = _run(tistis, "fase1", "--keep-deploy-branch")
    summary = done.stdout.strip().splitlines()
    assert any(line.startswith("WARNING: --keep-deploy-branch") for line in summary[-3:]), summary[-3:]
    assert git(origin, "rev-parse", "main") == main_before
    assert git(box.repo, "rev-parse", "main") == main_before  # not merged locally either
    assert tistis.only_run("fase1").facts["published"] is None


def test_fase3_drop_is_refused_whole_when_something_outside_depends_on_it(tistis: Target) -> None:
    box = tistis.box
    box.sql("CREATE VIEW vw_outside_report AS SELECT * FROM mv_branch_performance_metrics")
    present = box.sql(ACLS)
    done = tistis.rollback("run", "fase3", "--db-option", "2", "--yes", timeout=400)
    assert done.returncode == 1, done.stdout[-2000:]
    line = done.stderr.strip().splitlines()[-1]
    assert "nothing dropped" in line and \
        "view vw_outside_report depends on mv_branch_performance_metrics" in line, line
    assert box.sql(ACLS) == present  # every FASE 3 object still there


def test_vercel_goes_back_to_an_earlier_deployment_only_when_it_has_the_reverted_tree(
        tistis: Target) -> None:
    from rollback.config import load_settings
    from rollback.deploy.vercel import Vercel
    from rollback.runs.core import Options, Run, SilentUi

    box = tistis.box
    run = Run(load_settings(env=tistis.env()), Options("fase1"), SilentUi(), dry=True)
    vercel = Vercel()
    good = git(box.repo, "rev-parse", "HEAD")
    assert vercel.serving(run) == good
    # a bad commit deployed on top: production's latest deployment
    (box.repo / "BAD.md").write_text("a bad change\n")
    git(box.repo, "add", "BAD.md")
    git(box.repo, "commit", "-q", "-m", "bad change")
    subprocess.run([str(box.dir / "bin" / "vercel"), "--prod", "--yes", "--cwd", str(box.repo)],
                   check=True, capture_output=True, timeout=300)
    bad = git(box.repo, "rev-parse", "HEAD")
    assert vercel.serving(run) == bad
    # its revert has exactly the tree of the deployment before it: no build, an instant rollback
    git(box.repo, "revert", "--no-edit", "HEAD")
    revert = git(box.repo, "rev-parse", "HEAD")
    found = vercel.earlier(run, revert)
    assert found is not None and found.commit == good
    assert "instant rollback with `vercel rollback" in vercel.describe(run, revert)[0]
    started = vercel.start(run, revert)
    assert started.expected == good and vercel.serving(run) == good
    # production is no longer on the latest deployment: nothing is guessed, it deploys instead
    assert vercel.earlier(run, revert) is None
    assert vercel.describe(run, revert)[0].startswith("`vercel --prod --yes`")
