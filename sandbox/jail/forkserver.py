"""The fork server: a process with torch already imported that forks one fresh worker per request.

Each worker pays no interpreter or torch start-up, yet shares nothing with the candidates
before it: it is a new process that dies with its evaluation. The fork server itself never runs
candidate code and never touches CUDA, so a fork never inherits a GPU context.

Process tree for one worker:  fork server -> keeper (host pid namespace; waits, reports the exit
status, enforces the hard deadline, kills on supervisor loss) -> worker (pid 1 of its own
namespaces when possible; runs the candidate).
"""
from __future__ import annotations

import json
import os
import resource
import select
import signal
import socket
import sys
import time

from sandbox.jail import namespaces as jail
from sandbox.jail import startup


def main() -> None:
    ctrl = socket.socket(fileno=int(sys.argv[1]))
    startup.warm(sys.argv[2:])  # torch, the worker's handler, triton where present
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    ctrl.send(json.dumps({"ready": True, "pid": os.getpid()}).encode())
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(ctrl, 1 << 16, 4)
        except OSError:
            break
        if not msg:
            break  # the supervisor is gone: so are we
        req = json.loads(msg)
        pid = startup.forked(_keeper, req, *fds, ctrl)  # the keeper exits on its own
        for fd in fds:
            os.close(fd)
        ctrl.send(json.dumps({"pid": pid}).encode())
        _reap()
    _reap()


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _enter_namespaces(req: dict) -> list[str]:
    notes = []
    wanted = [(jail.CLONE_NEWNET, "net"), (jail.CLONE_NEWPID, "pid"), (jail.CLONE_NEWNS, "mount")]
    wanted = [(f, n) for f, n in wanted if req["isolate"].get(n)]
    for flag, name in wanted:
        try:
            jail.unshare(flag)
        except OSError as e:
            notes.append(f"no {name} namespace ({e.strerror})")
    return notes


def _keeper(req: dict, sock_fd: int, log_fd: int, status_fd: int, ctrl: socket.socket) -> None:
    ctrl.close()  # the fork server's own channel: not the worker's
    os.setsid()
    notes = []
    for d in req.get("cgroup", []):
        try:
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        except OSError as e:
            notes.append(f"not in cgroup {os.path.basename(d)} ({e.strerror})")
    notes += _enter_namespaces(req) if os.geteuid() == 0 else ["not root: no namespaces"]
    pid = os.fork()
    if pid == 0:
        jail.die_with_parent()
        _init(req, sock_fd, log_fd, status_fd, notes)
    os.close(sock_fd)
    os.close(log_fd)
    deadline = time.monotonic() + req["hard_timeout_s"]
    poller = select.poll()
    poller.register(status_fd, select.POLLERR | select.POLLHUP)
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if poller.poll(50) or time.monotonic() > deadline:  # supervisor gone, or hard limit
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
    os._exit(0)


def _init(req: dict, sock_fd: int, log_fd: int, status_fd: int, notes: list[str]) -> None:
    """Pid 1 of the worker's namespace: reaps, reports the worker's exit, and on its own exit
    takes every process left in the namespace with it (the kernel does that). Without a pid
    namespace it is a child subreaper, so orphans land here and are killed all the same."""
    jail.become_subreaper()
    if os.getpid() == 1 and req["isolate"].get("mount") and not any("mount" in n for n in notes):
        try:
            jail.mount_proc()
        except OSError as e:
            notes.append(f"no /proc of its own ({e.strerror})")
    pid = os.fork()
    if pid == 0:
        os.close(status_fd)
        jail.die_with_parent()
        _worker(req, sock_fd, log_fd, notes)
        os._exit(0)
    os.close(sock_fd)
    os.close(log_fd)
    while True:  # reap orphans reparented to us until the worker itself ends
        done, status = os.waitpid(-1, 0)
        if done == pid and not os.WIFSTOPPED(status):  # a tracee's stop is not its end
            break
    try:
        os.write(status_fd, json.dumps({"wait_status": status}).encode())
    except OSError:
        pass
    _kill_descendants()
    os._exit(0)


def _kill_descendants() -> None:
    me = str(os.getpid())
    for _ in range(1000):
        kids = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        kids.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
        for kid in kids:
            try:
                os.kill(kid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            if not kids:
                return
        time.sleep(0.005)


def _worker(req: dict, sock_fd: int, log_fd: int, notes: list[str]) -> None:
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    startup.settle(req, sock_fd)
    if os.geteuid() == 0 and req["isolate"].get("mount") and not any("mount" in n for n in notes):
        try:
            jail.lock_filesystem(req["writable"])
        except OSError as e:
            notes.append(f"filesystem not locked ({e.strerror})")
    if os.geteuid() == 0:
        try:  # CUDA pins host memory (mlock): lift the cap while we still may, then drop the right to
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        except (OSError, ValueError) as e:
            notes.append(f"memlock limit kept ({e})")
        try:
            jail.drop_capabilities()
        except OSError as e:
            notes.append(f"capabilities kept ({e.strerror})")
    startup.serve(socket.socket(fileno=sock_fd), req, notes)

if __name__ == "__main__":
    main()
