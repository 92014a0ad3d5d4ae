"""The benchmark harness: runs profiles of cells (workload × query × backend × sites × rows
× ε) and records what each PET costs and what it gives."""
