"""A job: its model and stored definition, its schedule, what it does on failure."""
