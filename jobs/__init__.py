"""Periodic jobs (reconciliation) scheduled with APScheduler; see jobs/scheduler.py."""
