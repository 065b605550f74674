"""scheduler/plugins layer."""
