"""Benchmark peers: the same workload run the way a team would build it without this daemon, for the benchmarks
to compare with (issue 29). A benchmark harness, not product code: nothing in collector/ imports it, and it is in no
wheel. arq_peer.py: arq workers over Redis, a cron job enqueuing due networks, httpx and PyMongo."""
