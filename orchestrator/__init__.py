"""Planning and running (installed as ``ckptlab.orchestrator``): a spec becomes units and cells
(``plan.py``); the driver runs the units on an executor and stores their rows (``runner.py``).
docs/architecture.md has the map.

Owns: nothing at the package level. Must not: be imported by ``analyses/``, or by ``ckptlab/``
at module level (layering: ``ckptlab/`` is the bottom; the CLI imports ``orchestrator/`` inside
its commands).
"""
