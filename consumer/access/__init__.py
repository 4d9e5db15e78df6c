"""Database access: read-only views of what the API would send, for Reach to poll."""
