"""The process sandbox's seccomp filter: system calls a hosted server never needs are refused (EPERM).

Built with libseccomp (the library behind Docker's and podman's profiles) through ctypes, exported as a
BPF program that bwrap installs (`--seccomp FD`) on everything it starts, so the filter is in force from
the first instruction of the barrier shell to the last of the server, across every exec.

Refused: loading kernel code (modules, kexec, bpf), keyrings, perf events, userfaultfd, io_uring, mounts
and namespace changes (mount, unshare, setns, pivot_root, the new mount API, and clone or clone3 asking
for a new user namespace), and the host administration calls (reboot, swap, accounting, quotas, raw I/O
ports, the kernel log, file handles by number).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from functools import cache

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7
CLONE_NEWUSER = 0x10000000

DENIED = (
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "add_key",
    "request_key",
    "keyctl",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "mount",
    "umount2",
    "pivot_root",
    "unshare",
    "setns",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "iopl",
    "ioperm",
    "syslog",
    "open_by_handle_at",
    "name_to_handle_at",
    "lookup_dcookie",
)


def _errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class SeccompUnavailable(RuntimeError):
    """libseccomp is not installed on this host."""


@cache
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(f"libseccomp is missing ({exc}); apt-get install libseccomp2") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.restype = ctypes.c_int
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def available() -> bool:
    try:
        _lib()
    except SeccompUnavailable:
        return False
    return True


@cache
def program() -> bytes:
    """The filter as a BPF program for this machine's architecture."""
    lib = _lib()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:

        def rule(action: int, name: str, *conditions: _ArgCmp) -> None:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:
                return  # not a system call of this architecture
            array = (_ArgCmp * len(conditions))(*conditions) if conditions else None
            code = lib.seccomp_rule_add_array(ctx, action, number, len(conditions), array)
            if code < 0:
                raise SeccompUnavailable(f"cannot add the seccomp rule for {name}: {os.strerror(-code)}")

        for name in DENIED:
            rule(_errno(errno.EPERM), name)
        new_user = _ArgCmp(0, SCMP_CMP_MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER)
        rule(_errno(errno.EPERM), "clone", new_user)
        # clone3 takes its flags in memory a filter cannot read: refused as unknown, so that the C library
        # falls back to clone, whose flags the rule above does see.
        rule(_errno(errno.ENOSYS), "clone3")
        fd = os.memfd_create("mcphost-seccomp")
        try:
            code = lib.seccomp_export_bpf(ctx, fd)
            if code < 0:
                raise SeccompUnavailable(f"cannot export the seccomp filter: {os.strerror(-code)}")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


def descriptor() -> int:
    """A descriptor holding the filter, to hand to `bwrap --seccomp`."""
    fd = os.memfd_create("mcphost-seccomp")
    os.write(fd, program())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
