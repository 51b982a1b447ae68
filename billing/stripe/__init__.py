"""Everything that speaks to Stripe, and nothing else does.

- `gateway` — the only module that imports `stripe`: pinned API version, TLS floor, PHI
  guard on every payload, idempotency keys, errors mapped to card / transient / permanent.
- `push` — finalized invoices, voids and customers carried to Stripe, resumable.
- `tasks` — the Celery tasks around the push and reconciliation.
- `webhooks` (the verified endpoint) and `events` (what each event does locally).
- `reconcile` — local invoices compared with Stripe's, mismatches audited.
- `djstripe_adapter` — dj-stripe's mirror without an API key in the database.
- `sessions` — the Stripe-hosted payment-method page.
- `wiring` — start-up: registers the push and void handlers behind billing/seam.py.

The rest of billing reaches this package only through billing/seam.py (spec §8)."""
