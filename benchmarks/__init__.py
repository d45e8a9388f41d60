"""The parts of bench.py: timing and memory probes (`measure`) and the authors'-style path (`reference`)."""
