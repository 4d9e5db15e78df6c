"""Tests of the local stack (package reach_devstack): importable as ``devstack.tests``."""
