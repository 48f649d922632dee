"""`python -m benchmarks`: latency per model, thread count and device, kept per device."""
