"""What cron runs every minute (`python -m watchdog_singleton run`): the launcher, its argument
parser, the hand-over to the resident supervisor, lean mode. Standard library only."""
