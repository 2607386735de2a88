from selftok.cli import app

app()
