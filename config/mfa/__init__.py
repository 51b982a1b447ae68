"""Operator MFA (issue 12, item 5): a second factor for every staff user of the console.

TOTP devices (django-otp's otp_totp) with single-use recovery codes (otp_static, stored
hashed), enrolment on first login, a verify step on every later login, throttled wrong
codes, a superuser's reset with a reason, everything audited. See docs/console.md."""
