from synctool.cli.main import entry

entry()
