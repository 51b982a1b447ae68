"""The billing engine: the rules of spec §2–§7, applied to one office under its lock.

- `cycles` — boundaries in the office's zone, month-end clamping, trials (§2, §4).
- `office` — the office's lock, the plan in force at a boundary, its draft (§5).
- `lines` — patient lines from the activation history, set-based (§5).
- `labels` — what each line says, in one place.
- `finalize` — minimum adjustment, gapless number, `open`/`paid`, the push seam (§6.1, §7).
- `advance` — opening the next draft and processing boundaries in order (§4, §6).
- `run` — the billing run over due offices, and its dry run (§6, §10).

Use-cases that people trigger (subscribe, activate, void, one-off) are in
billing/services.py; they call into the engine."""
