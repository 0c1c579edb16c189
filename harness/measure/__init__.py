"""What is measured: teacher-forced scoring, metrics, generation and its built-in backends, lm-eval, matched
forgetting, mask reports and the built-in probes.
"""
