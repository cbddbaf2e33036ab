"""runaway: the command line over liborchestra."""
