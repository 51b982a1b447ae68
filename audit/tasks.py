from celery import shared_task

from audit.services import audit_anchor, audit_seal


@shared_task
def audit_seal_task() -> int:
    """Seal what the after-commit sealer missed, then anchor the head (spec §9)."""
    sealed = audit_seal()
    audit_anchor()
    return sealed
