"""``python -m site_agent``: the ``fedseg site`` commands."""

from site_agent.cli import main

main()
