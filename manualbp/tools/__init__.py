"""Tools built on the core: the `manualbp` command, run folders and plots, the benchmark.

Nothing in the core imports this package; it is where argparse, matplotlib and
progress bars live, so `import manualbp` loads none of them.
"""
