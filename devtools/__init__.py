"""Development-only tools: never imported by production code, nor listed in INSTALLED_APPS.

devtools/localstripe/tests/test_not_in_production.py checks that no production module
imports this package (or the ``localstripe`` package it wraps).
"""
