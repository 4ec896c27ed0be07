"""Benchmarks: throughput and cost ratios measured side by side in one run (`make bench`,
`make bench-quick`). Not tests: nothing here asserts; every figure printed is measured in the run
that prints it. See BENCHMARKS.md."""
