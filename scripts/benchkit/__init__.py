"""What the benchmark and check scripts in scripts/ share, and the parts of the longer ones, kept
out of the `seqrl` package (which a training run imports). `python scripts/x.py` puts scripts/ on
sys.path, so a script imports `benchkit.<module>`; tests put scripts/ there themselves."""
