from runaway.cli import run

run()
