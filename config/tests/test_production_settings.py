"""Production refuses to start half-configured (issue 8, defect 6): Stripe pushes off with
nobody told, no webhook secret (every webhook rejected), a plain-http Stripe base (no TLS
floor), or the test-only escape hatch that lets Stripe calls run inside a transaction.

Each case starts `config.settings.production` in a fresh interpreter with a controlled
environment (the helpers of config/tests/test_security.py, which also holds the secrets'
cases and `check --deploy`)."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from billing.stripe.gateway import Gateway, OutsideTransactionRequired
from config.tests.test_security import production_env, production_settings, run_python

REFUSED = [
    # 1. Stripe pushes off: nothing pushed, synced or reconciled, and nobody told.
    pytest.param({"STRIPE_PUSH_ENABLED": None}, "STRIPE_PUSH_ENABLED", id="pushes unset"),
    pytest.param({"STRIPE_PUSH_ENABLED": "false"}, "STRIPE_PUSH_ENABLED", id="pushes false"),
    pytest.param({"STRIPE_PUSH_ENABLED": "0"}, "STRIPE_PUSH_ENABLED", id="pushes 0"),
    pytest.param({"STRIPE_PUSH_ENABLED": ""}, "STRIPE_PUSH_ENABLED", id="pushes empty"),
    pytest.param({"STRIPE_PUSH_ENABLED": "maybe"}, "STRIPE_PUSH_ENABLED", id="pushes garbage"),
    pytest.param(
        {"STRIPE_PUSH_ENABLED": "false", "STRIPE_DISABLED_I_KNOW": "false"},
        "STRIPE_PUSH_ENABLED",
        id="pushes off, opt-out false",
    ),
    pytest.param(
        {"STRIPE_PUSH_ENABLED": "true", "STRIPE_DISABLED_I_KNOW": "true"},
        "STRIPE_DISABLED_I_KNOW",
        id="pushes on and opted out",
    ),
    # 2. No webhook secret: every webhook would be rejected.
    pytest.param({"STRIPE_WEBHOOK_SECRET": None}, "STRIPE_WEBHOOK_SECRET", id="no webhook secret"),
    pytest.param({"STRIPE_WEBHOOK_SECRET": ""}, "STRIPE_WEBHOOK_SECRET", id="empty webhook secret"),
    pytest.param({"STRIPE_WEBHOOK_SECRET": "   "}, "STRIPE_WEBHOOK_SECRET", id="blank webhook secret"),
    pytest.param(
        {"STRIPE_WEBHOOK_SECRET": "whsec_dev_only_localstripe"}, "STRIPE_WEBHOOK_SECRET", id="development secret"
    ),
    pytest.param({"STRIPE_WEBHOOK_SECRET": "sk_live_" + "0" * 32}, "STRIPE_WEBHOOK_SECRET", id="not a webhook secret"),
    # 3. A Stripe base that is not https: no TLS at all, so no TLS floor.
    pytest.param({"STRIPE_API_BASE": "http://api.stripe.com"}, "STRIPE_API_BASE", id="http base"),
    pytest.param({"STRIPE_API_BASE": "HTTP://api.stripe.com"}, "STRIPE_API_BASE", id="HTTP base"),
    pytest.param({"STRIPE_API_BASE": "http://127.0.0.1:8420"}, "STRIPE_API_BASE", id="localstripe base"),
    pytest.param({"STRIPE_API_BASE": "api.stripe.com"}, "STRIPE_API_BASE", id="base without scheme"),
    pytest.param({"STRIPE_API_BASE": "ftp://api.stripe.com"}, "STRIPE_API_BASE", id="ftp base"),
    pytest.param({"STRIPE_API_BASE": "https://"}, "STRIPE_API_BASE", id="https base without host"),
    pytest.param({"STRIPE_API_BASE": "   "}, "STRIPE_API_BASE", id="blank base"),
    pytest.param({"STRIPE_API_BASE": " https://api.stripe.com"}, "STRIPE_API_BASE", id="base with a space"),
    # 4. The test-only escape hatch (Stripe calls inside a database transaction).
    pytest.param({"STRIPE_ALLOW_IN_TRANSACTION": "true"}, "STRIPE_ALLOW_IN_TRANSACTION", id="escape hatch on"),
    pytest.param({"STRIPE_ALLOW_IN_TRANSACTION": "1"}, "STRIPE_ALLOW_IN_TRANSACTION", id="escape hatch 1"),
    # 5. Operator MFA off (the console on a password alone) or its throttling off (config/mfa/).
    pytest.param({"OPERATOR_MFA_REQUIRED": "false"}, "OPERATOR_MFA_REQUIRED", id="operator mfa off"),
    pytest.param({"OPERATOR_MFA_REQUIRED": "0"}, "OPERATOR_MFA_REQUIRED", id="operator mfa 0"),
    pytest.param({"OPERATOR_MFA_THROTTLE_FACTOR": "0"}, "OPERATOR_MFA_THROTTLE_FACTOR", id="mfa throttling off"),
    # 5. No audit chain key (issue 12): the chain would be an unkeyed hash anyone can redo.
    pytest.param({"AUDIT_HMAC_KEYS": None}, "AUDIT_HMAC_KEYS", id="no audit key"),
    pytest.param({"AUDIT_HMAC_KEYS": "  "}, "AUDIT_HMAC_KEYS", id="blank audit key"),
    pytest.param({"AUDIT_HMAC_KEYS": "k1:short"}, "AUDIT_HMAC_KEYS", id="short audit key"),
    pytest.param({"AUDIT_HMAC_KEYS": "no-key-id-" + "x" * 40}, "AUDIT_HMAC_KEYS", id="audit key without id"),
    pytest.param(
        {"AUDIT_HMAC_KEYS": "dev:dev-only-audit-hmac-key-not-a-secret-0123456789"},
        "AUDIT_HMAC_KEYS",
        id="development audit key",
    ),
    pytest.param({"AUDIT_HMAC_KEYS": "k2:" + "y" * 40 + ",k1:short"}, "AUDIT_HMAC_KEYS", id="short retired audit key"),
    pytest.param({"AUDIT_HMAC_KEYS": "legacy:" + "z" * 40}, "AUDIT_HMAC_KEYS", id="reserved audit key id"),
]


@pytest.mark.parametrize(("overrides", "named"), REFUSED)
def test_it_refuses_to_start_in_production_half_configured(overrides: dict[str, str | None], named: str) -> None:
    result = run_python("import config.settings.production\n", production_env(**overrides))
    assert result.returncode != 0, f"production started with {overrides}"
    assert "ImproperlyConfigured" in result.stderr
    assert named in result.stderr.strip().splitlines()[-1], result.stderr  # in the message itself


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="stripe's own base"),
        pytest.param({"STRIPE_API_BASE": "https://api.stripe.com"}, id="https base"),
        pytest.param({"STRIPE_API_BASE": "HTTPS://api.stripe.com/"}, id="HTTPS base"),
        pytest.param({"STRIPE_ALLOW_IN_TRANSACTION": "false"}, id="escape hatch explicitly off"),
        pytest.param({"AUDIT_HMAC_KEYS": "k2:" + "n" * 40 + ",k1:" + "o" * 40}, id="rotated audit keys"),
    ],
)
def test_it_starts_in_production_fully_configured(overrides: dict[str, str | None]) -> None:
    s = production_settings(**overrides)
    assert s["OPERATOR_MFA_REQUIRED"] is True and s["OTP_TOTP_THROTTLE_FACTOR"] >= 1  # on unless said otherwise

    assert "dev-only" not in s["AUDIT_HMAC_KEYS"]
    assert s["STRIPE_PUSH_ENABLED"] is True
    assert s["STRIPE_WEBHOOK_SECRET"].startswith("whsec_")
    assert not s.get("STRIPE_ALLOW_IN_TRANSACTION")


def test_it_reports_nothing_on_check_deploy_fully_configured_with_an_https_base() -> None:
    code = (
        "from django.core.management import execute_from_command_line\n"
        "execute_from_command_line(['manage.py', 'check', '--deploy', '--fail-level', 'DEBUG'])\n"
    )
    result = run_python(code, production_env(STRIPE_API_BASE="https://api.stripe.com"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_it_runs_without_stripe_pushes_only_when_told_so_explicitly_and_says_so() -> None:
    """The documented opt-out (e.g. pushes paused during an incident): it starts, warns on
    stderr, and still requires the webhook secret and an https base (webhooks for invoices
    already in Stripe, and the payment-method pages, keep working)."""
    env = production_env(STRIPE_PUSH_ENABLED=None, STRIPE_DISABLED_I_KNOW="true")
    code = "import config.settings.production as s\nprint(s.STRIPE_PUSH_ENABLED)\n"
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert "STRIPE_DISABLED_I_KNOW" in result.stderr and "pushes are off" in result.stderr

    for name, value in [("STRIPE_WEBHOOK_SECRET", ""), ("STRIPE_API_BASE", "http://api.stripe.com")]:
        refused = run_python(code, {**env, name: value})
        assert refused.returncode != 0 and name in refused.stderr, refused.stderr


@pytest.mark.django_db
def test_the_gateway_ignores_the_escape_hatch_outside_the_test_settings(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even if a non-test settings module carried STRIPE_ALLOW_IN_TRANSACTION, the gateway
    would not read it: a call inside a transaction is refused before any request."""
    calls: list[Any] = []

    def fake_call(params: Any, options: Any) -> Any:
        calls.append(params)
        return {"id": "in_x"}

    gateway = Gateway(stripe_client=object())  # type: ignore[arg-type]
    settings.STRIPE_ALLOW_IN_TRANSACTION = True
    with transaction.atomic():
        assert gateway._call(fake_call, {}, None) == {"id": "in_x"}  # test settings: the hatch works
        monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "config.settings.production")  # what the gateway asks
        with pytest.raises(OutsideTransactionRequired):
            gateway._call(fake_call, {}, None)
    assert len(calls) == 1
