"""Evaluate a release policy against verified, typed claims. Default deny.

Every rule is checked (no short-circuit) so the audit log records all reasons a request
failed; the requester only ever learns "denied".
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from modelseal.policy.document import TCB_CHECKED_TEES, GpuPolicy, ReleasePolicy
from modelseal.protocol.claims import Claims
from modelseal.protocol.runtime_events import load_model_event
from modelseal.tee import registry

__all__ = ["MODEL_DIGEST_CLAIM", "Decision", "evaluate"]

#: Kinds whose evidence proves nothing: their claims must say so (a KBS started insecure).
INSECURE_TEES = frozenset(registry.kinds(insecure=True))

#: init-data claim the loader's TEE carries to say which model it will load.
MODEL_DIGEST_CLAIM = "model_digest"


@dataclass(frozen=True)
class Decision:
    """The outcome and why. ``reasons`` are for the audit log only."""

    allowed: bool
    reasons: tuple[str, ...]

    @property
    def verdict(self) -> str:
        return "allow" if self.allowed else "deny"


def evaluate(
    policy: ReleasePolicy | None,
    claims: Claims,
    *,
    now: float,
    attested_models: Collection[str] | None = None,
) -> Decision:
    """Decide whether ``claims`` satisfy ``policy``; ``None`` (no policy) denies.

    ``attested_models`` are the model digests a serving TEE attests at run time (an
    attested TLS gateway binds them into its evidence): when given, ``model_digest``
    must be one of them instead of the launch-time init-data claim.
    """
    if policy is None:
        return Decision(False, ("no release policy is set for this key (default deny)",))
    failures: list[str] = []
    notes: list[str] = []

    if claims.tee not in policy.tee:
        failures.append(f"tee {claims.tee!r} is not in the allowed kinds {list(policy.tee)}")
    if claims.tee in INSECURE_TEES and not claims.insecure:
        failures.append(f"{claims.tee} evidence is accepted only by a KBS started insecure")

    if claims.debug and not policy.debug:
        failures.append("the TEE runs in debug mode and the policy does not allow debug")

    if claims.tee in TCB_CHECKED_TEES:
        if claims.tcb_status is None:
            failures.append(f"the {claims.tee} verifier reported no TCB status")
        elif claims.tcb_status not in policy.tcb_status:
            failures.append(f"TCB status {claims.tcb_status!r} is not in {list(policy.tcb_status)}")

    if policy.measurements is not None:
        matched = _match_measurements(policy.measurements, claims, failures)
        if matched is not None:
            notes.append(f"measurements entry {matched} matched")

    for key, want in policy.init_data.items():
        got = claims.init_data.get(key)
        if got is None:
            failures.append(f"init_data claim {key!r} is missing")
        elif got != want:
            failures.append(f"init_data claim {key!r} is {got[:128]!r}, policy requires {want!r}")

    if policy.model_digest is not None and attested_models is not None:
        if policy.model_digest not in {m.lower() for m in attested_models}:
            served = ", ".join(sorted(attested_models)[:4]) or "none"
            failures.append(
                f"the policy's model {policy.model_digest} is not among the attested models "
                f"({served[:300]})"
            )
    elif policy.model_digest is not None:
        got = claims.init_data.get(MODEL_DIGEST_CLAIM)
        if got is None:
            failures.append(f"init_data claim {MODEL_DIGEST_CLAIM!r} is missing")
        elif got.lower() != policy.model_digest:
            failures.append(
                f"attested model digest {got[:80]!r} is not the policy's {policy.model_digest}"
            )

    observed = set(claims.runtime_events)
    for digest in policy.loaded_models:
        if load_model_event(digest) not in observed:
            failures.append(f"the runtime measurements record no load of model {digest}")
    for event in policy.runtime_events:
        if event not in observed:
            failures.append(f"the runtime measurements lack the event {event[:160]!r}")
    if policy.gpus is not None:
        _check_gpus(policy.gpus, claims, failures)

    if policy.not_after is not None and now >= policy.not_after.timestamp():
        when = policy.not_after.astimezone(UTC).isoformat()
        failures.append(f"the policy expired at {when}")

    if failures:
        return Decision(False, tuple(failures))
    at = datetime.fromtimestamp(now, UTC).isoformat()
    return Decision(True, (f"all policy conditions met at {at}", *notes))


def _match_measurements(
    entries: tuple[dict[str, str], ...], claims: Claims, failures: list[str]
) -> int | None:
    """Index of the first entry whose every value equals the claim (hex, case-insensitive)."""
    observed = {k.lower(): v.lower() for k, v in claims.measurements.items()}
    misses: list[str] = []
    for i, entry in enumerate(entries):
        bad = [name for name, want in entry.items() if observed.get(name) != want]
        if not bad:
            return i
        if len(misses) < 8:
            misses.append(f"entry {i}: {', '.join(sorted(bad))}")
    failures.append("no measurements entry matched (" + "; ".join(misses) + ")")
    return None


#: Kinds whose claims are a device's (a GPU's), verified with the CPU TEE's.
DEVICE_TEES = frozenset(registry.kinds(device=True))


def _version_tuple(text: object) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in str(text).split("."))
    except ValueError:
        return None


def _check_gpus(rules: GpuPolicy, claims: Claims, failures: list[str]) -> None:
    """Count the attested GPUs, then hold every one to the per-device rules."""
    gpus = [d for d in claims.devices if d.tee in DEVICE_TEES]
    if len(gpus) < rules.min_count:
        failures.append(
            f"the policy requires {rules.min_count} attested GPU(s) in confidential-computing "
            f"mode; the attestation carried {len(gpus)}"
        )
    want = _version_tuple(rules.min_driver_version) if rules.min_driver_version else None
    for i, gpu in enumerate(gpus):
        extra = gpu.extra
        mode = extra.get("cc_mode")
        if rules.cc_mode == "on" and mode is None:
            # the GPU's signed report has no CC-mode field: the mode is what the guest's
            # attester read from NVML, and attesters that do not report it (Trustee's
            # guest-components) give no proof of 'on'; the policy must say it accepts that
            failures.append(
                f"gpu{i}: the evidence reports no confidential-computing mode, and the "
                "policy requires 'on' (cc_mode: any accepts GPUs whose attester does not "
                "report it)"
            )
        elif rules.cc_mode == "on" and mode != "on":
            failures.append(f"gpu{i}: confidential-computing mode is {mode!r}, not 'on'")
        rim = extra.get("rim")
        if rules.rim_match and not (
            isinstance(rim, dict) and rim.get("driver") == "match" and rim.get("vbios") == "match"
        ):
            failures.append(f"gpu{i}: driver and VBIOS RIMs did not both match (rim: {rim!r})")
        if want is not None:
            have = _version_tuple(extra.get("driver_version"))
            if have is None or have < want:
                failures.append(
                    f"gpu{i}: driver {str(extra.get('driver_version'))[:32]!r} is older than "
                    f"{rules.min_driver_version}"
                )
        if rules.measurements is not None:
            mine: list[str] = []
            _match_measurements(rules.measurements, gpu, mine)
            failures.extend(f"gpu{i}: {reason}" for reason in mine)
