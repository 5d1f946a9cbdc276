"""Carry a wheel that is larger than one transfer to the device machine, in parts, and unpack it there.

    python benchmarks/device/split_wheel.py split WHEEL OUTDIR [--limit-mb 60]   # here: OUTDIR/part-1.tar, ...
    python3 benchmarks/device/split_wheel.py join SITE PART [PART ...]          # there: the unpacked wheel in SITE

Each wheel member is xz-compressed on its own and the members are packed, first fit by compressed size, into
plain tar files of at most ``--limit-mb`` each; ``join`` decompresses them into SITE, which then holds what ``pip
install --target SITE WHEEL`` would have put there (the package folders and the .dist-info). The device machine
takes at most 64 MiB of files per call and keeps what a call wrote while it stays warm, so parts sent by
consecutive calls can be joined by the last one. Needs nothing beyond the standard library.
"""

from __future__ import annotations

import argparse
import io
import lzma
import sys
import tarfile
import zipfile
from pathlib import Path


def split(wheel: Path, out: Path, limit_mb: float) -> list[Path]:
    limit = int(limit_mb * 2**20)
    members = []
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.is_dir():
                continue
            data = lzma.compress(z.read(info), preset=6)
            if len(data) > limit:
                raise ValueError(f"{wheel.name}: {info.filename} is {len(data) / 2**20:.1f} MiB compressed, over the "
                                 f"{limit_mb} MiB limit of one part")
            mode = (info.external_attr >> 16) & 0o777 or 0o644
            members.append((info.filename, data, mode))
    parts: list[list] = []
    for member in sorted(members, key=lambda m: -len(m[1])):
        for part in parts:
            if sum(len(m[1]) for m in part) + len(member[1]) <= limit:
                part.append(member)
                break
        else:
            parts.append([member])
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(parts, 1):
        path = out / f"part-{i}.tar"
        with tarfile.open(path, "w") as tar:
            for name, data, mode in part:
                ti = tarfile.TarInfo(name + ".xz")
                ti.size, ti.mode = len(data), mode
                tar.addfile(ti, io.BytesIO(data))
        paths.append(path)
    return paths


def join(site: Path, parts: list[Path]) -> int:
    n = 0
    for part in parts:
        with tarfile.open(part) as tar:
            for ti in tar:
                if not ti.name.endswith(".xz") or ti.name.startswith("/") or ".." in Path(ti.name).parts:
                    raise ValueError(f"{part}: unexpected member {ti.name!r}")
                dst = site / ti.name[: -len(".xz")]
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(lzma.decompress(tar.extractfile(ti).read()))
                dst.chmod(ti.mode)
                n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("split")
    sp.add_argument("wheel", type=Path)
    sp.add_argument("out", type=Path)
    sp.add_argument("--limit-mb", type=float, default=60.0)
    jp = sub.add_parser("join")
    jp.add_argument("site", type=Path)
    jp.add_argument("parts", type=Path, nargs="+")
    args = parser.parse_args()
    if args.cmd == "split":
        for path in split(args.wheel, args.out, args.limit_mb):
            print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB")
    else:
        print(f"{join(args.site, args.parts)} files into {args.site}", file=sys.stderr)


if __name__ == "__main__":
    main()
