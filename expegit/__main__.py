from expegit.cli import run

run()
