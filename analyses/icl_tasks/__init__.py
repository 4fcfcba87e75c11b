"""In-context-learning probes: built-in task data, task variants, prompts, scoring, baseline.

Owns: nothing but the package. Must not: import ``orchestrator/`` or torch at module level: the
``icl`` analysis, ``ckptlab prompts`` (``ckptlab/icl_replay.py``) and the pico build import
these modules.
"""
