"""expegit: experiment campaigns in git, every execution tied to its exact code (see cli.py)."""
