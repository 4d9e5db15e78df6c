"""Records out of band: a CSV export for Reach's one-time import, and sample records for Reach to
build its schemas from. Both read what the API path would send (stream.py), never a copy of it."""
