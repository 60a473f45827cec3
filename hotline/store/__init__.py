"""The store: the only package that talks to Redis.

``cases`` holds the case records, their audit trails and indexes; other modules here hold the
Redis structures of one capability each and share the connection of a ``Store``.
"""

from hotline.store.cases import (
    CONFIRM_QUEUE_STATES,
    CaseChanged,
    CaseNotFound,
    CreateResult,
    Event,
    Store,
    StoreUnavailable,
    queue_score,
    stored_record,
)

__all__ = ["CONFIRM_QUEUE_STATES", "CaseChanged", "CaseNotFound", "CreateResult", "Event", "Store",
           "StoreUnavailable", "queue_score", "stored_record"]
