"""The method's tensor maths: scores and maps from tokens and the test-set rules (scoring), the memory bank,
the metrics and their bootstrap intervals. No file I/O; imports only mvfa.common, CLIP/, dataset/ and prompt."""
