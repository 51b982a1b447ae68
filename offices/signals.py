"""Signals offices send so that other apps can react without offices importing them."""

from django.dispatch import Signal

# Sent after commit when an office's business name or billing email changed
# (kwargs: office_id). Billing syncs them to the office's Stripe customer.
billing_identity_changed = Signal()
