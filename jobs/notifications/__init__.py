"""Notifications: a signed POST to a URL of the submitter's when a job or an experiment ends.

Three parts, each its own module: `policy` (where a notification may be sent: checked when a
job is submitted and again when sending), `outbox` (reads the job event log after a stored
cursor and turns each ended job into the deliveries it asked for) and `delivery` (takes due
deliveries, posts them signed, records the outcome). Nothing here is called from the lifecycle
or from a request: the worker's notifier runs the outbox and the deliveries (worker/notifier.py).
docs/design/outbox.md states the rules.
"""
