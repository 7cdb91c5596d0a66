"""Stands in for eval.py: runs the candidate binary and waits for it (which never happens)."""
import subprocess
import sys

subprocess.run([sys.argv[1]])
print('{"ok": true}')
