"""Processes: the /proc reader, which processes are a job's tree and how a tree is stopped,
how the daemon is spawned. Standard library only; every process uses it."""
