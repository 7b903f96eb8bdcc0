"""Options both Azure kinds' attesters read (the shared option vocabulary)."""

from __future__ import annotations

from modelseal.tee.plugin import AttesterInput, OptionSpec

IMDS_URL = OptionSpec(
    "azure_imds_url",
    "Azure instance metadata service base URL (VCEK, TD quote); default the link-local IMDS.",
    type="url",
)
ATTESTER_INPUTS = (AttesterInput(IMDS_URL, "imds_url"),)
