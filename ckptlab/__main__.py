from ckptlab.cli import script

script()
