"""Measure stage: drive Locust, turn raw records into statistics and verdicts, sweep settings, write reports."""
