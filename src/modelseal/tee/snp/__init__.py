"""AMD SEV-SNP: configfs-tsm / /dev/sev-guest attester and the VCEK/VLEK verifier."""
