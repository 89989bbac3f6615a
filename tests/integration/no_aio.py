"""Run a program with Linux AIO refused: ``python -m tests.integration.no_aio PROG ARGS``.

Why: the spool's seal syncs through Linux AIO (`smtpgate.queue.aio_sync`) and falls
back to threads where ``io_setup`` is refused (a container's seccomp profile, a full
``fs.aio-max-nr``). A seccomp filter of this process alone (inherited by what it
execs) makes that refusal real without touching a system-wide setting.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys

#: io_setup's number (asm/unistd_64.h; the generic table) and the audit arch.
_ARCH = {"x86_64": (206, 0xC000003E), "aarch64": (0, 0xC00000B7)}
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def refuse_io_setup() -> None:
    """Install the filter: io_setup fails with EPERM, every other call is allowed."""
    nr, arch = _ARCH[platform.machine()]
    ld_w_abs, jeq_k, ret_k = 0x20, 0x15, 0x06
    program = b"".join([
        _insn(ld_w_abs, 0, 0, 4),  # seccomp_data.arch
        _insn(jeq_k, 0, 3, arch),
        _insn(ld_w_abs, 0, 0, 0),  # seccomp_data.nr
        _insn(jeq_k, 0, 1, nr),
        _insn(ret_k, 0, 0, _RET_ERRNO | errno.EPERM),
        _insn(ret_k, 0, 0, _RET_ALLOW),
    ])
    buf = ctypes.create_string_buffer(program)
    fprog = struct.pack("=HxxxxxxQ", len(program) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    arg = ctypes.create_string_buffer(fprog)
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, arg, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


if __name__ == "__main__":
    refuse_io_setup()
    os.execv(sys.argv[1], sys.argv[1:])
