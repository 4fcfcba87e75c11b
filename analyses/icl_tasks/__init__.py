"""In-context-learning probes: built-in task data, task variants, prompts, scoring, baseline."""
