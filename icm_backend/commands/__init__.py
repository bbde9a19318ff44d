"""One module per CLI subcommand; each exposes add_subcommands(subparsers)."""
