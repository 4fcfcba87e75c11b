"""The pico suite: tiny GPT-NeoX models trained here on the Python install's own text
(``build``, with ``icl_mixture``'s rows) and published into a local hub cache (``publish``).

Owns: nothing but the package. Must not: be imported by a light command: its modules import
torch and transformers at module level, so only ``ckptlab pico build`` imports them, when it
runs.
"""
