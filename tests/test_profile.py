"""The platform profile: shipped profiles, how rollback.toml and ROLLBACK_PROFILE choose and
override one, refusals in one line, and where the deployed version is read from."""

from __future__ import annotations

import stat
import sys
import time
from pathlib import Path

import pytest

from rollback.config import load_settings
from rollback.errors import ConfigError
from rollback.profile import (
    HealthShape,
    VersionCommand,
    VersionUnknown,
    deployed_version,
    load_profile,
    version_matches,
)


def _settings(tmp_path: Path, toml: str = "", **env: str):
    config = tmp_path / "rollback.toml"
    config.write_text(toml)
    return load_settings(env={"ROLLBACK_CONFIG": str(config), **env})


def test_contract_profile_is_the_api_reference() -> None:
    profile = load_profile("contract")
    assert profile.endpoints == ("/v1/leads", "/v1/appointments", "/v1/branches")
    assert profile.health.path == "/health" and not profile.health.follow_redirects
    assert profile.health.database_field == "database"
    assert {profile.errors.missing, profile.errors.revoked, profile.errors.expired} == {"UNAUTHORIZED"}
    assert profile.version.source == "health_field"


def test_tistis_profile_is_the_platform_as_deployed() -> None:
    profile = load_profile("tistis")
    assert profile.endpoints == ("/api/v1/leads",)
    assert profile.health.follow_redirects and profile.health.database_field is None
    assert profile.health.verdict("healthy") == "pass"
    assert profile.health.verdict("degraded") == "warn"
    assert profile.health.verdict("unhealthy") == "fail"
    assert (profile.errors.missing, profile.errors.unknown, profile.errors.revoked,
            profile.errors.expired) == ("MISSING_AUTH_HEADER", "KEY_NOT_FOUND", "KEY_REVOKED",
                                        "KEY_EXPIRED")
    assert profile.errors.not_found is None and profile.errors.www_authenticate == "Bearer realm="
    assert profile.version.source == "command"
    assert {"usage_count", "last_used_ip", "usage_reset_date", "updated_at"} <= profile.compared_exempt
    assert profile.migrations_dir == "supabase/migrations" and profile.down_suffix is None
    assert profile.fase3.cache == "staleness"


def test_an_unknown_health_word_fails() -> None:
    assert HealthShape(passing=("ok",), warning=()).verdict("healthy") == "fail"
    assert HealthShape().verdict(None) == "fail"


def test_config_file_chooses_and_overrides_the_profile(tmp_path: Path) -> None:
    settings = _settings(tmp_path, '[platform]\nprofile = "tistis"\n\n[platform.health]\n'
                                   'path = "/api/health"\nfollow_redirects = false\n')
    assert settings.platform.name == "tistis"
    assert settings.platform.health.path == "/api/health"
    assert not settings.platform.health.follow_redirects
    assert settings.platform.errors.unknown == "KEY_NOT_FOUND"  # the rest stays tistis'
    assert settings.health_endpoints == ("/api/v1/leads",)


def test_environment_chooses_the_profile_over_the_file(tmp_path: Path) -> None:
    settings = _settings(tmp_path, '[platform]\nprofile = "tistis"\n', ROLLBACK_PROFILE="contract")
    assert settings.platform.name == "contract"


def test_default_profile_is_contract_and_explicit_endpoints_win(tmp_path: Path) -> None:
    settings = _settings(tmp_path, '[health]\nendpoints = ["/v1/leads"]\n')
    assert settings.platform.name == "contract"
    assert settings.health_endpoints == ("/v1/leads",)


def test_a_profile_file_of_ones_own_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text(
        'name = "mine"\napi_prefix = "/api/v2"\n[[resources]]\nname = "orders"\ntable = "orders"\n')
    settings = _settings(tmp_path, '[platform]\nprofile = "mine.toml"\n')
    assert settings.platform.endpoints == ("/api/v2/orders",)


@pytest.mark.parametrize(("toml", "env", "says"), [
    ('[platform]\nprofile = "nope"\n', {}, "[platform] profile: unknown profile 'nope'"),
    ("", {"ROLLBACK_PROFILE": "nope"}, "ROLLBACK_PROFILE: unknown profile 'nope'"),
    ('[platform]\nprofile = "missing.toml"\n', {}, "cannot be read"),
    ('[platform.version]\nsource = "command"\n', {}, 'source = "command" needs command'),
    ('[platform.version]\nsource = "header"\n', {}, 'source = "header" needs header'),
    ('[platform]\napi_prefix = "api"\n', {}, "expected a path such as"),
    ('[platform]\nresources = []\n', {}, "name at least one list endpoint"),
    ('[platform.health]\nwords = ["ok"]\n', {}, "unknown setting"),
    ('platform = "tistis"\n', {}, "[platform] must be a table"),
])
def test_bad_profile_settings_are_refused_in_one_line(tmp_path: Path, toml: str,
                                                       env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _settings(tmp_path, toml, **env)
    message = str(caught.value)
    assert says in message and "\n" not in message, message


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake-vercel"
    path.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_version_from_a_command_fills_in_the_host_and_applies_the_pattern(tmp_path: Path) -> None:
    script = _script(tmp_path, "print('  id dpl_1')\nprint('  githubCommitSha  ' + "
                               "('abc1234' if sys.argv[1] == 'inspect' and sys.argv[2] == "
                               "'127.0.0.1:8123' else 'wrong'))")
    profile = load_profile("tistis").model_copy(update={"version": load_profile("tistis").version
                                                        .model_copy(update={"command": f"{script} "
                                                                            "inspect {api_host}"})})
    assert deployed_version(profile, "http://127.0.0.1:8123") == "abc1234"


@pytest.mark.parametrize(("body", "says"), [
    ("sys.exit(3)", "exited 3: no output$"),
    ("print('out'); print('first', file=sys.stderr); print('last', file=sys.stderr); sys.exit(3)",
     "exited 3: last$"),  # its error output's last line
    ("print('one'); print('two'); sys.exit(4)", "exited 4: two$"),  # else its output's
    ("print('no sha here')", "matches"),
])
def test_a_version_command_that_tells_nothing_says_why(tmp_path: Path, body: str, says: str) -> None:
    script = _script(tmp_path, body)
    tistis = load_profile("tistis")
    profile = tistis.model_copy(update={"version": tistis.version.model_copy(
        update={"command": str(script)})})
    with pytest.raises(VersionUnknown, match=says):
        deployed_version(profile, "http://127.0.0.1:1")


def test_a_missing_version_command_is_named() -> None:
    tistis = load_profile("tistis")
    profile = tistis.model_copy(update={"version": tistis.version.model_copy(
        update={"command": "no-such-vercel-binary inspect"})})
    with pytest.raises(VersionUnknown, match="command not found"):
        deployed_version(profile, "http://127.0.0.1:1")


def test_version_from_the_health_body_and_header() -> None:
    contract = load_profile("contract")
    assert deployed_version(contract, "http://x", {"version": "abc"}) == "abc"
    with pytest.raises(VersionUnknown, match="no 'version' field"):
        deployed_version(contract, "http://x", {"status": "ok"})
    header = contract.model_copy(update={"version": contract.version.model_copy(
        update={"source": "header", "header": "X-Commit"})})
    assert deployed_version(header, "http://x", None, {"X-Commit": "f00"}) == "f00"
    none = contract.model_copy(update={"version": contract.version.model_copy(
        update={"source": "none"})})
    assert deployed_version(none, "http://x") is None


@pytest.mark.parametrize(("reported", "expected", "same"), [
    ("3f2c9a1", "3f2c9a1b4e", True), ("3f2c9a1b4e", "3f2c9a1", True), ("4.6.0", "3f2c9a1", False),
    ("3f2c", "3f2c9a1b4e", False), ("3f2c9a1", "3f2c9a1", True),
])
def test_versions_match_in_full_or_by_a_7_character_prefix(reported: str, expected: str,
                                                            same: bool) -> None:
    assert version_matches(reported, expected) is same


def test_a_profile_without_a_phase_manifest_validates_but_refuses_a_rollback(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text(
        'name = "mine"\n[[resources]]\nname = "orders"\ntable = "orders"\n')
    settings = _settings(tmp_path, '[platform]\nprofile = "mine.toml"\n')
    with pytest.raises(ConfigError, match=r"has no \[platform.phases.fase2\]"):
        settings.platform.phase("fase2")


def test_the_shipped_manifests_find_their_phases() -> None:
    contract, tistis = load_profile("contract"), load_profile("tistis")
    assert {p.find.trailer for p in contract.phases.values()} == {"Rollback-Phase"}
    assert all(p.whole_commits for p in contract.phases.values())
    assert {p.find.subject for p in tistis.phases.values()} == {"^feat: FASE 1, 2 & 3 Complete"}
    assert not any(p.whole_commits for p in tistis.phases.values())
    assert [tistis.phase(n).database for n in ("fase1", "fase2", "fase3")] == [
        "none", "convert_branch_keys", "drop_objects"]


@pytest.mark.parametrize(("toml", "says"), [
    ('[platform.phases.fase4]\nfind = { trailer = "X" }\n', "unknown phase 'fase4'"),
    ('[platform.phases.fase1]\nfind = { trailer = "" }\n', "say how to find the phase's commits"),
    ('[platform.phases.fase1]\nfind = { subject = "(" }\n', "is not a regular expression"),
])
def test_a_bad_manifest_is_refused_in_one_line(tmp_path: Path, toml: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _settings(tmp_path, toml)
    assert says in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_dig_follows_a_dotted_path_and_stops_where_it_does_not_lead() -> None:
    from rollback.profile import dig

    body = {"services": {"database": {"status": "healthy"}}, "status": "ok"}
    assert dig(body, "services.database.status") == "healthy"
    assert dig(body, "status") == "ok"
    assert dig(body, "services.cache.status") is None
    assert dig(body, "status.deeper") is None
    assert dig(["not", "a", "dict"], "status") is None


def test_a_version_pattern_without_a_group_takes_the_whole_match(tmp_path: Path) -> None:
    script = _script(tmp_path, "print('deployed: 3f2c9a1b4e at noon')")
    tistis = load_profile("tistis")
    profile = tistis.model_copy(update={"version": tistis.version.model_copy(
        update={"command": str(script), "pattern": "[0-9a-f]{10}"})})
    assert deployed_version(profile, "http://127.0.0.1:1") == "3f2c9a1b4e"
    plain = tistis.model_copy(update={"version": tistis.version.model_copy(
        update={"command": str(script), "pattern": None})})
    assert deployed_version(plain, "http://127.0.0.1:1") == "deployed: 3f2c9a1b4e at noon"


def test_a_version_command_that_hangs_is_bounded(tmp_path: Path) -> None:
    script = _script(tmp_path, "import time\ntime.sleep(30)")
    tistis = load_profile("tistis")
    profile = tistis.model_copy(update={"version": tistis.version.model_copy(
        update={"command": str(script), "timeout_s": 0.5})})
    with pytest.raises(VersionUnknown, match=r"no answer within 0.5 s"):
        deployed_version(profile, "http://127.0.0.1:1")


def test_a_version_command_started_early_is_read_later_once_and_its_timeout_counts_from_its_start(
        tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script = _script(tmp_path, f"open({str(marker)!r}, 'a').write('x')\nprint('  githubCommitSha  f00ba47')")
    tistis = load_profile("tistis")
    source = tistis.version.model_copy(update={"command": str(script)})
    started = VersionCommand(source, "http://127.0.0.1:1")
    profile = tistis.model_copy(update={"version": source})
    assert deployed_version(profile, "http://127.0.0.1:1", command=started) == "f00ba47"
    assert started.result() == "f00ba47" and marker.read_text() == "x"  # run once, kept
    slow = VersionCommand(source.model_copy(update={
        "command": str(_script(tmp_path, "import time\ntime.sleep(30)")), "timeout_s": 0.5}),
        "http://127.0.0.1:1")
    time.sleep(0.6)  # its timeout passed meanwhile, counted from its start
    with pytest.raises(VersionUnknown, match=r"no answer within 0.5 s"):
        slow.result()
    with pytest.raises(VersionUnknown, match=r"no answer within 0.5 s"):
        slow.result()  # the outcome is kept: the command is not started again


def test_a_version_command_nobody_read_is_ended(tmp_path: Path) -> None:
    source = load_profile("tistis").version.model_copy(update={
        "command": str(_script(tmp_path, "import time\ntime.sleep(30)"))})
    started = VersionCommand(source, "http://127.0.0.1:1")
    started.close()
    assert started._process is not None and started._process.poll() is not None
    missing = VersionCommand(source.model_copy(update={"command": "no-such-vercel-binary"}), "x")
    missing.close()
    with pytest.raises(VersionUnknown, match="command not found"):
        missing.result()


def test_an_empty_version_field_is_no_version() -> None:
    with pytest.raises(VersionUnknown, match="no 'version' field"):
        deployed_version(load_profile("contract"), "http://x", {"version": ""})


def test_paths_of_resources_by_name_or_object() -> None:
    tistis, contract = load_profile("tistis"), load_profile("contract")
    assert tistis.path_of("leads") == "/api/v1/leads" == tistis.path_of(tistis.resources[0])
    assert contract.resource_at("/v1/branches").table == "branches"
    assert tistis.leads_path == "/api/v1/leads" and tistis.auth_path == "/api/v1/leads"
    with pytest.raises(KeyError):
        tistis.resource_at("/v1/leads")


def test_the_version_source_is_described_with_its_host_filled_in() -> None:
    tistis = load_profile("tistis")
    assert tistis.version.describe("http://127.0.0.1:8123") == "`vercel inspect 127.0.0.1:8123`"
    assert load_profile("contract").version.describe() == "the health body's 'version'"


@pytest.mark.parametrize(("source", "described"), [
    ({"source": "header", "header": "X-Version"}, "the health answer's X-Version header"),
    ({"source": "none"}, "nothing"),
    ({"source": "command", "command": "vercel inspect {api_host}"}, "`vercel inspect {api_host}`"),
])
def test_each_version_source_is_described(source: dict[str, str], described: str) -> None:
    from rollback.profile import VersionSource

    assert VersionSource(**source).describe() == described


def test_a_resource_is_found_by_its_name_and_an_unknown_path_is_named() -> None:
    contract = load_profile("contract")
    assert [contract.resource(r.name) for r in contract.resources] == list(contract.resources)
    assert contract.resource("nope") is None
    with pytest.raises(KeyError) as caught:
        contract.resource_at("/v1/nope")
    assert caught.value.args == ("/v1/nope is not a list endpoint of profile contract",)
