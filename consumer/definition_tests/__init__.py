"""``reach-sync test``: a partner's sync definition held to cases, "given these rows, Reach
receives these records" (docs/testing.md)."""
