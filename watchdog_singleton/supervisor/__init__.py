"""The resident supervisor (exec'd `python -I -S`, one per running job): its loop, the daemon's
output and log files, the lock watch, periodic plans and the cluster lease steps.
Standard library only (psycopg for cluster jobs)."""
