"""The worker layer: runs jobs. It never imports the client's App; it takes a small
Protocol of what it needs (``worker.host``).

    lifecycle     Worker: connections, start-up checks, registration, shutdown
    claimer       the claim loop (and how far to claim ahead of free slots)
    routing       which claim statement a claim sends
    slots         claimed and running jobs; one asyncio task per running job
    executor      one attempt: a short pipeline of named steps ending in one Outcome
    context       what a handler sees: current_job()
    completer     outcomes buffered and written in batches, fenced by the lease
    leases        heartbeats renew every held lease; a watchdog stops jobs when they lapse
    listener      LISTEN for enqueue notifications
    maintenance/  reclaim, expire, prune, periodic ticks: one small step per file
"""
