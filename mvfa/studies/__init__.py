"""The paper's studies and tables: ablation variants (studies), their features and figures, the published
numbers, and comparisons of results files. The top layer: imports any layer below it."""
