"""``python -m devtools.localstripe --port N [--from-scratch]``."""

from __future__ import annotations

from devtools.localstripe.app import main

main()
