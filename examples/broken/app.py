"""A deliberately broken release: it crashes at start, so a promotion of it
must roll back on its own."""
import sys

print("starting... failed to connect to the database", flush=True)
sys.exit(3)
