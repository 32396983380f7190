"""The shared eval harness: every artifact is scored the same way against its baseline."""
