"""The local stack: real servers started from packages, for the demo and the tests."""
