"""The outbox: every message (and later every store write-back) is a committed row first.

``queue`` decides-and-records (with the policy gate), ``dispatcher`` sends at the allowed
rate, ``retry`` is the pure backoff decision, ``ratelimit`` the per-number token bucket.
"""
