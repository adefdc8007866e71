"""r1proxy benchmarks: ``python -m bench.run`` prints the table and writes docs/BENCHMARKS.md."""
