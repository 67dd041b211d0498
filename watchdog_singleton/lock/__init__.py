"""The singleton lock: flock(2) on a file in a private per-user folder, and the checks that
folder must pass (owner, mode, local file system)."""
