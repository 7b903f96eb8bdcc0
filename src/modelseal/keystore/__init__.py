"""KBS-side storage of data keys, always wrapped under the KEK."""
