"""Our crontab lines (written byte-exact, never by python-crontab), the reader of old
hand-written lines for `import`, and whether a cron daemon runs."""
