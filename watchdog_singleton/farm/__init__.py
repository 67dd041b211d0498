"""The task farm: a list of short commands, each run exactly once, over workers on one or many nodes.

tasklist (what a task is, its stable id) -> store (todo/running/finished/failed, leases) ->
runner (how one task is started) -> workers (the farm's loop: claim, run, heartbeat, stop) ->
trace (timeline.jsonl to Chrome trace JSON) and progress (what a user watches).
"""

REQUEUE = 75  # EX_TEMPFAIL: stopped with work left (signal or --timeout); run the farm again to continue
SOME_FAILED = 1  # the list is done, and some tasks failed
# EX_IOERR: the farm's database or files failed it (locked by someone, a full disk, a read-only
# folder, removed, unreachable); it stopped as on SIGUSR1. Fix that, then run the farm again.
STORAGE_FAILED = 74
