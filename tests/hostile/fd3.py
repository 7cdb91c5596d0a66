"""Plays eval.py and a candidate: writes its verdict on fd 3, then starts a "candidate"
that tries to forge it: through an inherited fd 3, and through /proc/<parent>/fd/3.
argv[1]: 'guard' (the parent marks fd 3 non-inheritable and itself non-dumpable, as
eval.py must) or 'careless' (it does neither)."""
import ctypes
import os
import subprocess
import sys

FORGE = r'''
import os
try:
    os.write(3, b"FORGED-inherited\n"); print("inherited DONE")
except OSError as exc:
    print("inherited", type(exc).__name__, exc.errno)
try:
    fd = os.open(f"/proc/{os.getppid()}/fd/3", os.O_WRONLY)
    os.write(fd, b"FORGED-proc\n"); print("proc DONE")
except OSError as exc:
    print("proc", type(exc).__name__, exc.errno)
'''

try:
    os.fstat(3)
except OSError as exc:
    print("fd3", type(exc).__name__, exc.errno, os.environ.get("RATCHET_RESULT_FD"))
    sys.exit(0)
if sys.argv[1] == "guard":
    os.set_inheritable(3, False)
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
else:
    os.set_inheritable(3, True)
subprocess.run([sys.executable, "-c", FORGE], close_fds=False)
os.write(3, b'{"verdict": "trusted"}\n')
print("fd3 ok", os.environ["RATCHET_RESULT_FD"])
