"""Reports on evaluated runs: `compare` loads metrics.json/per_slice.csv of several runs,
checks they are comparable, tabulates them (with paired Wilcoxon tests), and `formats`
renders the result as a table, Markdown, LaTeX, CSV or JSON."""
