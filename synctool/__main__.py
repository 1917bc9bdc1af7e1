from synctool.cli.console import entry

entry()
