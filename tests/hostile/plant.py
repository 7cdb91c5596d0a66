"""Plants files a later `git` in this directory would obey, plus names and types that must
never come back: .git (a dir with a config hook), .gitconfig, a symlink to /etc/passwd named
like a log, a fifo, odd names, a file in a sub-dir, one too big; also edits a staged file."""
import os
from pathlib import Path

os.makedirs(".git/hooks", exist_ok=True)
Path(".git/config").write_text("[core]\n\tfsmonitor = touch /tmp/pwned\n")
Path(".git/hooks/post-checkout").write_text("#!/bin/sh\ntouch /tmp/pwned\n")
Path(".gitconfig").write_text("[core]\n\tpager = touch /tmp/pwned\n")
Path(".gitattributes").write_text("* filter=evil\n")
os.symlink("/etc/passwd", "x.log")
os.mkfifo("fifo.log")
Path("-rf.log").write_text("dash")
Path("a b.log").write_text("space")
os.makedirs("sub", exist_ok=True)
Path("sub/y.log").write_text("nested")
Path("big.log").write_bytes(b"x" * (9 << 20))
Path("run.log").write_text("the real log\n")
Path("naive.c").write_text("int pwned;\n")
print("planted", flush=True)
