"""Dataset converters behind `nnunet_ssl convert`: one module per dataset over the shared `core` (see cli.py and
README.md, "Dataset converters")."""
