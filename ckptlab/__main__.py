"""``python -m ckptlab``: the ``ckptlab`` script (``ckptlab.cli.script``).

Owns: nothing but that entry point. Must not: hold code of its own (the commands live in
``ckptlab/cli/``).
"""

from ckptlab.cli import script

script()
