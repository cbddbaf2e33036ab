from parasearch.cli import run

run()
