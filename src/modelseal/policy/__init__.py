"""Release policies: typed declarative documents, validated at upload, default deny."""
