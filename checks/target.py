"""What the checks run against, refused before any request when it is not really configured.

    require_target(settings)    ConfigError naming the variable: no API_BASE_URL (or one with a
                                user or password in it), an empty or unset TEST_API_KEY,
                                whitespace in a key

A suite that falls back to a default URL, or runs half its checks without a key, reports a
target healthy that it never saw: a CI job with a misnamed secret stays green for ever. So
there is no implicit target: API_BASE_URL (or `[target] api_base_url`, which the sandbox's own
rollback.toml sets) must be given, and TEST_API_KEY with it. Nothing here sends a request.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from rollback.config import Settings
from rollback.errors import ConfigError

__all__ = ["KEY_VARIABLES", "require_target"]

#: the keys a check sends as a Bearer token, by their environment variable
KEY_VARIABLES = {
    "TEST_API_KEY": "test_api_key",
    "TEST_BRANCH_API_KEY": "test_branch_api_key",
    "TEST_REVOKED_API_KEY": "test_revoked_api_key",
    "TEST_EXPIRED_API_KEY": "test_expired_api_key",
}


def require_target(settings: Settings) -> None:
    """Raise ConfigError (one line, exit 2) unless the API and the validation key are given.

    The message names the variable, never its value."""
    if "api_base_url" not in settings.target.model_fields_set:
        raise ConfigError(
            "API_BASE_URL is not set: export the API to check (e.g. https://api.example.com) or "
            "set [target] api_base_url in rollback.toml; `eval \"$(rollback sandbox env)\"` "
            "targets the sandbox. There is no default target")
    if "@" in urlsplit(settings.target.api_base_url).netloc:
        raise ConfigError(
            "API_BASE_URL carries a user or password (https://user:...@host): the checks "
            "authenticate with TEST_API_KEY, and a password in a URL ends up in logs; remove it")
    secrets = settings.secrets
    for variable, field in KEY_VARIABLES.items():
        secret = getattr(secrets, field)
        if secret is not None and any(c.isspace() for c in secret.get_secret_value()):
            raise ConfigError(
                f"{variable} contains whitespace (a trailing newline or space from the secret "
                "store?): an API key has none; export it again without it")
    if secrets.test_api_key is None:
        raise ConfigError(
            "TEST_API_KEY is not set (or empty): export a valid tenant-wide key of the target "
            "(tis_live_... or tis_test_...); without it half the checks would not run")
