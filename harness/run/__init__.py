"""One run, from its spec to its record: the spec and its feature configs, which features combine, the run's identity
and method key, the phases of `execute`, the reference models, evaluation, export and replay.
"""
