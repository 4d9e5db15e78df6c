"""Scheduled delivery: resources sent once per tick, through the batch endpoint (design.md,
"Scheduled delivery")."""
