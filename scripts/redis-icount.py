#!/usr/bin/env python3
"""Instructions redis-server executes per command, counted by callgrind.

    scripts/redis-icount.py            # every case, 2000 commands each

Starts its own redis-server under `valgrind --tool=callgrind` on a free
loopback port and sends, for each case, 200 commands to warm up, then
`callgrind_control -z`, then 2000 more (pipelined 100 at a time, so the
system calls of one command do not dominate), then `callgrind_control -d`:
the figure is the dump's total divided by 2000. The count does not move
with the machine's load. The session scripts are read from
backend-redis/src/scripts.rs, so the figures follow the code; the
arguments are a save of the bench's cart (`{"apple":2827}`).

Cases: tower-sessions' `SET` with `PXAT` and the `GET` both libraries
read with; offstate's common save (`SAVE_BUILT`), with and without an
announcement; the general save (`SAVE`) on the same session.

Needs redis-server and valgrind (scripts/setup.sh installs both).
"""

import glob
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = 2000
BATCH = 100


def resp(*args):
    """One command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out += [b"$%d\r\n" % len(a), a, b"\r\n"]
    return b"".join(out)


def reply_end(buf, at):
    """Where the reply starting at `at` ends (IndexError/ValueError: not yet)."""
    kind = buf[at : at + 1]
    line = buf.index(b"\r\n", at)
    if kind in (b"+", b"-", b":"):
        return line + 2
    n = int(buf[at + 1 : line])
    if kind == b"$":
        end = line + 2 if n < 0 else line + 2 + n + 2
        if end > len(buf):
            raise IndexError
        return end
    if kind == b"*":
        at = line + 2
        for _ in range(max(n, 0)):
            at = reply_end(buf, at)
        return at
    raise ValueError(kind)


def replies(buf):
    """The complete replies in `buf`, and whether any is an error."""
    at, count, error = 0, 0, False
    while at < len(buf):
        try:
            end = reply_end(buf, at)
        except (IndexError, ValueError):
            break
        error |= buf[at : at + 1] == b"-"
        at, count = end, count + 1
    return count, error


def lua(name, source):
    match = re.search(r"const " + name + r': &str = r"(.*?)";\n', source, re.S)
    if not match:
        sys.exit(f"redis-icount: no script {name} in backend-redis/src/scripts.rs")
    return match.group(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    for program in ("redis-server", "valgrind", "callgrind_control"):
        if not shutil.which(program):
            sys.exit(f"redis-icount: {program} not found; run scripts/setup.sh")
    source = open(os.path.join(ROOT, "backend-redis/src/scripts.rs")).read()
    general = lua("PRELUDE", source) + lua("SAVE", source)
    built = lua("SAVE_BUILT", source)

    work = tempfile.mkdtemp(prefix="redis-icount.")
    port = free_port()
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/cg.%p",
         "redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conn = None
        for _ in range(300):
            try:
                conn = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.1)
        if conn is None:
            sys.exit("redis-icount: redis-server under valgrind did not start")

        def send(commands):
            conn.sendall(b"".join(commands))
            buf = b""
            while True:
                count, error = replies(buf)
                if count >= len(commands):
                    break
                buf += conn.recv(1 << 20)
            if error:
                sys.exit(f"redis-icount: an error reply: {buf[:200]!r}")
            return buf

        def total():
            subprocess.run(["callgrind_control", "-d", str(server.pid)],
                           check=True, capture_output=True)
            dump = max(glob.glob(f"{work}/cg.{server.pid}.*"), key=os.path.getmtime)
            for line in open(dump):
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
            sys.exit(f"redis-icount: no total in {dump}")

        def case(name, command):
            """`command(i)`: the i-th command of the case."""
            for start in range(0, 200, BATCH):
                send([command(i) for i in range(start, start + BATCH)])
            subprocess.run(["callgrind_control", "-z", str(server.pid)],
                           check=True, capture_output=True)
            for start in range(200, 200 + COMMANDS, BATCH):
                send([command(i) for i in range(start, start + BATCH)])
            print(f"{name:<58} {total() / COMMANDS:>9,.0f}", flush=True)

        def load(script):
            return send([resp("SCRIPT", "LOAD", script)]).split(b"\r\n")[1].decode()

        key = "offstate:s:{ih}_myKVYOScFcJ6en6agPHKcKGYuCaPK5xyATcV-jgA"
        now = 1795980239281
        created = now - 100000
        idle = now + 1800000
        data = b'4:cart14:{"apple":2827}'

        def header(version):
            return struct.pack(">BddddII", 1, version, created, idle, 0, 0, 0)

        def reset():
            send([resp("SET", key, header(0) + data, "PXAT", str(idle))])

        print(f"{'command (instructions in redis-server per command)':<58} {'instr':>9}")
        reset()
        case("GET of a session string", lambda i: resp("GET", key))
        case("SET with PXAT (tower-sessions' save)",
             lambda i: resp("SET", key, header(i) + data, "PXAT", str(idle)))
        sha = load(built)
        reset()
        case("offstate common save (SAVE_BUILT)",
             lambda i: resp("EVALSHA", sha, "1", key, header(i), header(i + 1) + data, str(idle)))
        reset()
        case("offstate common save, announced",
             lambda i: resp("EVALSHA", sha, "1", key, header(i), header(i + 1) + data, str(idle),
                            "offstate:invalidations", f"k {key[11:]} {i + 1}"))
        sha = load(general)
        reset()
        case("offstate general save (SAVE), same session",
             lambda i: resp("EVALSHA", sha, "1", key, str(now), str(i), str(i + 1), "",
                            str(idle), key[11:], "k", "", "1", "w", header(i + 1) + data))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
