"""On-demand deployments: dedicated replicas billed per GPU-second (SPEC §2, §4, §5)."""
