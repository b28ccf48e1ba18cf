"""indb benchmarks: one script per question; results written to benchmarks/results/."""
