"""asv benchmarks of hessarray (see common.py for the backends and asv.conf.json to run them)."""
