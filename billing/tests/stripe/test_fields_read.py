"""Every field our Stripe code reads exists in the API version we pin (issue 8, item 17):
`paid_out_of_band` was read from retrieved invoices although, in the pinned version, it is
only a parameter of `/pay`, so against real Stripe an out-of-band payment was never seen.

The reads are found in the source (subscripts and `_field`/`_get` calls on the variables
that hold Stripe objects) and checked against stripe-python's typed resources, which
describe the pinned version (stripe-python's own API version is ours)."""

from __future__ import annotations

import ast
from pathlib import Path

import stripe

from billing.stripe.gateway import STRIPE_API_VERSION

ROOT = Path(__file__).resolve().parents[3]
MODULES = ("push.py", "events.py", "reconcile.py", "sessions.py")
# The names that hold a Stripe object in those modules, and its resource.
STRIPE_VARIABLES: dict[str, type] = {
    "customer": stripe.Customer,
    "created": stripe.Invoice,
    "current": stripe.Invoice,
    "found": stripe.Invoice,
    "remote": stripe.Invoice,
    "stripe_invoice": stripe.Invoice,
    "session": stripe.checkout.Session,
}
ACCESSORS = {"_field", "_get"}


def _fields(resource: type) -> set[str]:
    """The resource's declared fields (its annotations, through its bases)."""
    names: set[str] = set()
    for klass in resource.__mro__:
        names |= set(vars(klass).get("__annotations__", {}))
    return names


def reads() -> list[tuple[str, int, str, str]]:
    """(module, line, variable, field) for every literal field read on a Stripe object."""
    found: list[tuple[str, int, str, str]] = []
    for name in MODULES:
        tree = ast.parse((ROOT / "billing" / "stripe" / name).read_text())
        for node in ast.walk(tree):
            target = field = None
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
                if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
                    target, field = node.value.id, node.slice.value
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ACCESSORS
                and len(node.args) == 2
                and isinstance(node.args[0], ast.Name)
                and isinstance(node.args[1], ast.Constant)
            ):
                target, field = node.args[0].id, node.args[1].value
            if target in STRIPE_VARIABLES and isinstance(field, str):
                found.append((name, node.lineno, target, field))
    return found


def test_it_pins_the_version_stripe_python_describes() -> None:
    from stripe._api_version import _ApiVersion  # the version its typed resources are generated for

    assert _ApiVersion.CURRENT == STRIPE_API_VERSION


def test_it_reads_only_fields_of_the_pinned_api_version() -> None:
    found = reads()
    assert len(found) > 10  # the scan sees our reads at all
    unknown = [
        f"billing/stripe/{module}:{line}: {var}[{field!r}] is not a field of {STRIPE_VARIABLES[var].__name__}"
        for module, line, var, field in found
        if field not in _fields(STRIPE_VARIABLES[var])
    ]
    assert unknown == []


def test_it_would_catch_a_field_the_pinned_version_does_not_have() -> None:
    assert "paid_out_of_band" not in _fields(stripe.Invoice)
    assert {"amount_paid_off_stripe", "status", "total", "lines", "metadata"} <= _fields(stripe.Invoice)
