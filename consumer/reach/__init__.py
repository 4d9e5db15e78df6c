"""Reach: the API client and the local sandbox server."""
