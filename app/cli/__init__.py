"""The ``ml3`` command (``[project.scripts] ml3 = "ml3_cli:main"``, which runs ``main`` here): the parser and the local
commands in app/cli/commands.py, the service's in app/cli/service.py; the Python client they use is
ml3core/client.py."""


def main(argv=None) -> int:
    """Run ``ml3``; app/cli/commands.py loads on the call, so ``import app.cli`` stays light."""
    from app.cli.commands import main as run

    return run(argv)
