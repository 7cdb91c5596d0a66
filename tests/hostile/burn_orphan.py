"""A tree that hides CPU work: the command's child starts a grandchild and exits at once;
the orphaned grandchild burns CPU for argv[1] seconds, then tells the command it is done."""
import os
import sys
import time

r, w = os.pipe()
if os.fork() == 0:
    if os.fork() == 0:
        os.close(r)
        end = time.process_time() + float(sys.argv[1])
        while time.process_time() < end:
            pass
        os.write(w, b"x")
        os._exit(0)
    os._exit(0)
os.close(w)
os.wait()  # the child is gone; the grandchild is an orphan now
print("orphan done", os.read(r, 1) == b"x", flush=True)  # blocks without CPU
