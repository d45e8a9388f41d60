"""MVFA, in layers from the bottom up: common (settings, errors, flags; torch-free), method (tensor maths),
engine (running the method), runs (what the commands run) and studies (the paper's tables and figures).
A module imports only from its own layer and those below it (tests/test_layout.py)."""
