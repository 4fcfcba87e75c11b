"""The lm-eval tasks shipped for the pico suite: YAML and JSONL files that
``analyses/lm_eval_harness.py`` hands lm-eval (``SHIPPED_TASKS``), and the script that writes
their data (``make_pico_tasks.py``).

Owns: nothing but the package, which installs those files with ckptlab (package data). Must not:
hold code lm-eval runs: the YAMLs name no Python function.
"""
