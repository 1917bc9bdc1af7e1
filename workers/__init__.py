"""What runs inside the worker processes.

A worker never decides *what* to do: it runs the jobs it is handed (copy a
file, compare a pair) and reports what happened. Deciding, retrying,
renaming and deleting belong to the coordinator in ``synctool``.
"""
