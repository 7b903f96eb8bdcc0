"""Release policies: typed declarative documents, validated at upload, default deny."""

from __future__ import annotations

from modelseal.policy.document import (
    TCB_CHECKED_TEES,
    TCB_STATUSES,
    TEE_KINDS,
    PolicyInvalid,
    ReleasePolicy,
    parse_policy,
    parse_policy_text,
)
from modelseal.policy.evaluate import MODEL_DIGEST_CLAIM, Decision, evaluate

__all__ = [
    "MODEL_DIGEST_CLAIM",
    "TCB_CHECKED_TEES",
    "TCB_STATUSES",
    "TEE_KINDS",
    "Decision",
    "PolicyInvalid",
    "ReleasePolicy",
    "evaluate",
    "parse_policy",
    "parse_policy_text",
]
