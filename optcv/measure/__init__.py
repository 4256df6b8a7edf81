"""What optcv measures with the backends: latency and throughput, parity, the machine's limits, the settings
search, `optcv how-fast`, and the reference models they are measured on."""
