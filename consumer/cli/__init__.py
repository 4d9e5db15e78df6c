"""The ``reach-sync`` command line (``main``) and its commands."""
