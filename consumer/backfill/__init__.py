"""History: walking a resource's entity ids into the dirty topic (backfill, resync)."""
