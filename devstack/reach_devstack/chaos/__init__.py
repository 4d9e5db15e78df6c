"""The chaos suite: faults, malformed input and bad records against the local stack."""
