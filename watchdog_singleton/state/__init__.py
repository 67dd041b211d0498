"""A job's run state on this host: what runs, since when, its history."""
