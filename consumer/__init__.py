"""reach-sync: keeps Reach equal to a partner database, driven by Debezium change events."""

__version__ = "0.1.0"
