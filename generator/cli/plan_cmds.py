"""Placeholder: the owning work item fills this command group in."""
