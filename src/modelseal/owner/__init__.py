"""Owner-side library: seal, unseal, inspect, verify, publish."""
