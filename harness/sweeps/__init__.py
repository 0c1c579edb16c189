"""Many runs: sweep files and their grids, the built-in executors, the cost plan, progress and rehearsals.
"""
