"""What the commands run once their flags are parsed: few- and zero-shot training and tests, prediction on
your own images and scans, and the command line itself (cli: torch-free, imported before torch)."""
