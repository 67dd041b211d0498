"""The command line (typer): parse, call one function in commands/, print. Never loaded by
the tick or the resident supervisor."""
