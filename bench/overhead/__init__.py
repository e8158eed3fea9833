"""bench/gateway_overhead.py's parts: the processes it starts and watches (`procs`), the
servers it measures (`targets`), and one module per phase (`latency`, `throughput`,
`routes`, `streams`, `ramp`)."""
