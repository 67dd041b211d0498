"""watchdog-singleton: keep exactly one copy of a daemon running from cron, without root or systemd."""

__version__ = "0.1.0"
