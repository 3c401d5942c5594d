"""fa4doctor's exit codes, as promtool's: the CLI exits with them and `check --json` reports them."""

EXIT_OK = 0  # healthy: the preferred backend runs
EXIT_TOOL_FAILED = 1  # fa4doctor itself failed
EXIT_USAGE = 2  # a user mistake: a bad flag, an unreadable file
EXIT_PROBLEMS = 3  # the check ran and found problems (or the decision fell back)
