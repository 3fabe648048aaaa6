"""One module per ``cascadeseg`` subcommand: ``HELP``, ``add_arguments(parser)``, ``run(args)``."""
