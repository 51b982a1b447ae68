"""Operator MFA forms, in the console's theme (ConsoleFormMixin)."""

from __future__ import annotations

from django import forms

from config.admin_mixins import ConsoleFormMixin


class CodeForm(ConsoleFormMixin, forms.Form):
    """One code: six digits from the authenticator app, or (at login) a recovery code."""

    code = forms.CharField(
        max_length=32,
        label="Code",
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "autofocus": True, "spellcheck": "false", "autocapitalize": "off"}
        ),
    )


class MfaResetForm(ConsoleFormMixin, forms.Form):
    """Why the operators' MFA is reset (lost phone, left the company…), kept in the audit trail."""

    reason = forms.CharField(
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Required; kept in the audit trail. Confirm the operator's identity before resetting.",
    )
