"""The README's set-up commands do what it says, on a fresh checkout."""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import subprocess

from tests.helpers import SYNCTOOL, read_tree

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_the_first_set_up_command_mirrors_a_folder_of_a_fresh_checkout(tmp_path):
    """Run the README's first command, synctool already installed (its
    ``pip install .`` is what the test run stands on), in a copy of the
    files git tracks, with a home directory of its own."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Set-up on a fresh machine\n.*?```sh\n(.*?)\n```", readme, re.S)
    install, _, command = block.group(1).partition(" && ")
    assert install == "pip install ."
    args = shlex.split(command)
    assert args[0] == "synctool" and args[3:] == ["-y"], command
    source, destination = args[1], args[2]

    checkout, home = tmp_path / "checkout", tmp_path / "home"
    home.mkdir()
    tracked = subprocess.run(["git", "ls-files", "-z", "--", source], cwd=REPO, capture_output=True, check=True).stdout
    names = [name for name in tracked.decode().split("\0") if name]
    assert names, f"{source} is not in the checkout"
    for name in names:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, checkout / name)

    path = f"{pathlib.Path(SYNCTOOL).parent}{os.pathsep}{os.environ['PATH']}"
    p = subprocess.run(["sh", "-c", command], cwd=checkout, env={**os.environ, "HOME": str(home), "PATH": path},
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, (p.stdout, p.stderr)
    mirror = pathlib.Path(destination.replace("~", str(home), 1))
    assert home in mirror.parents  # a new folder, outside the checkout
    assert read_tree(mirror) == read_tree(checkout / source) != {}
