"""`python -m nnunet_ssl ...` == the `nnunet_ssl` command."""
from nnunet_ssl.commands.cli import main

if __name__ == "__main__":
    main()
