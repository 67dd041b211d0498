"""The task farm: a list of short commands, each run exactly once, over workers on one or many nodes.

tasklist (what a task is, its stable id) -> store (todo/running/finished/failed, leases) ->
runner (how one task is started) -> workers (the farm's loop: claim, run, heartbeat, stop) ->
trace (timeline.jsonl to Chrome trace JSON) and progress (what a user watches).
Its exit codes (REQUEUE, SOME_FAILED, STORAGE_FAILED) are in errors.py with every other.
"""
