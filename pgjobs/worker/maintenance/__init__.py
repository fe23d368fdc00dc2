"""Maintenance: the small steps any worker runs between claims, on a connection of its own.

Each step is safe to run concurrently with itself on other workers (SKIP LOCKED,
compare-and-set, or an advisory lock), so there is no leader to lose. One file per step;
``base.Step`` owns the schedule, ``maintainer.Maintenance`` runs the due ones.

    fold         batch counters' deltas folded into their rows, and batch events fired
    reclaim      jobs whose worker was lost come back (a recovery), or die past the budget
    expire       jobs not started before expires_at end ``expired``
    unique_keys  unique holds whose time ran out are released
    receipts     reliable-push receipts past their retry window are deleted
    limit_keys   concurrency keys nobody used for an hour are forgotten
    prune        finished jobs, emptied batches, gone workers' rows past their retention
    periodic     due cron ticks are enqueued, each exactly once
"""
