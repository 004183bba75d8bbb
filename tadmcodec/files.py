"""Which files a command reads and writes, and writing them safely.

Plans every (input, output) pair before any work starts, so usage errors
(several inputs with -o, an output that is also an input) are reported before
anything is written. Writes go to a temporary file in the target folder and are
renamed into place: an error or Ctrl-C never leaves a partial output.
"""

from __future__ import annotations

import os
import secrets
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from tadmcodec.errors import TadmError

STDIO = "-"


@dataclass(frozen=True)
class Job:
    source: str  # a path, or "-" for stdin
    target: str  # a path, or "-" for stdout


def expand_inputs(inputs: tuple[str, ...], extensions: tuple[str, ...]) -> list[tuple[str, Path | None]]:
    """Files to process, each with the directory it was found under (for mirroring), in a stable order.

    Directories are walked recursively and filtered by extension; files named
    explicitly are taken whatever their extension.
    """
    found: list[tuple[str, Path | None]] = []
    for item in inputs:
        if item == STDIO:
            found.append((STDIO, None))
            continue
        p = Path(item)
        if p.is_dir():
            for sub in sorted(p.rglob("*")):
                if sub.is_file() and sub.suffix.lower() in extensions:
                    found.append((str(sub), p))
        elif p.exists():
            found.append((str(p), None))
        else:
            raise TadmError(f"{item}: no such file or directory")
    return found


def plan(
    inputs: tuple[str, ...],
    extensions: tuple[str, ...],
    output: str | None,
    outdir: str | None,
    new_suffix: str,
) -> list[Job]:
    """Pair each input with its output path.

    -o names the single output; -d mirrors input directory trees under OUTDIR;
    otherwise the output sits next to its input with `new_suffix`. stdin
    without -o/-d goes to stdout.
    """
    if output is not None and outdir is not None:
        raise TadmError("give -o or -d, not both")
    found = expand_inputs(inputs, extensions)
    if not found:
        raise TadmError("no input files found")
    if output is not None and len(found) > 1:
        raise TadmError(f"-o names one output but there are {len(found)} inputs: use -d OUTDIR")
    if found.count((STDIO, None)) > 1:
        raise TadmError("stdin ('-') can be read only once")
    jobs: list[Job] = []
    for source, root in found:
        if output is not None:
            target = output
        elif source == STDIO:
            if outdir is not None:
                raise TadmError("stdin has no file name: use -o with '-'")
            target = STDIO
        elif outdir is not None:
            rel = Path(source).relative_to(root) if root is not None else Path(Path(source).name)
            target = str(Path(outdir) / rel.with_suffix(new_suffix))
        else:
            target = str(Path(source).with_suffix(new_suffix))
        jobs.append(Job(source, target))
    _check_targets(jobs)
    return jobs


def _check_targets(jobs: list[Job]) -> None:
    sources = {os.path.realpath(j.source) for j in jobs if j.source != STDIO}
    seen: set[str] = set()
    for j in jobs:
        if j.target == STDIO:
            continue
        real = os.path.realpath(j.target)
        if real in sources:
            raise TadmError(f"{j.target}: output would overwrite an input")
        if real in seen:
            raise TadmError(f"{j.target}: two inputs would write the same output")
        seen.add(real)


def read_source(source: str) -> bytes:
    if source == STDIO:
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise TadmError(f"cannot read: {exc.strerror or exc}") from None


def _create_temp(path: Path) -> tuple[int, str]:
    """Create a new, empty temporary file beside `path`; return (fd, its name).

    The file is opened with mode 0o666 and O_EXCL, as a shell redirect opens a
    new file, so the kernel applies the process umask (and any default ACL of
    the folder): 0644 under umask 022, 0600 under 077, like `cp` or `>`. tempfile.mkstemp
    would force 0600 instead, and reading the umask to chmod afterwards means
    briefly changing it for every thread of the process.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.part")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def write_target(target: str, data: bytes, force: bool) -> None:
    """Write atomically: temp file beside the target, fsync, rename. Refuses to clobber without force.

    A new file gets the mode the umask gives (see `_create_temp`); a file that is
    overwritten (-f) keeps its permission bits, as it would with `cp` or `>`.
    """
    if target == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    path = Path(target)
    if path.exists() and not force:
        raise TadmError(f"{target} exists (use -f to overwrite)")
    if path.is_dir():
        raise TadmError(f"{target} is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(path)
    except OSError as exc:
        raise TadmError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            try:
                old_mode = stat.S_IMODE(os.stat(path).st_mode)
            except FileNotFoundError:
                pass
            else:
                os.chmod(tmp, old_mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:  # includes KeyboardInterrupt: never leave the .part behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise TadmError(f"cannot write {target}: {exc.strerror or exc}") from None
        raise
