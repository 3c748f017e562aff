"""A real local stack (Redis, libvirt hosts, the counter guest, workers) for tests, the demo and benchmarks."""
