from orchestra.cli import run

run()
