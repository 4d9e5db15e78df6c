"""Tests of the Reach sandbox (package reach_sandbox): importable as ``sandbox.tests``."""
