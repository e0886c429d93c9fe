"""A dataset as a zip (``label/file``), streamed in pieces: a member is never held whole."""

import zipfile
from pathlib import Path
from typing import Iterator, List, Tuple

# An export hands the zip out in pieces of about this size.
EXPORT_CHUNK = 256 * 1024


class _Chunks:
    """A write-only file collecting what zipfile writes, handed out in pieces."""

    def __init__(self) -> None:
        self.parts: List[bytes] = []
        self.position = 0
        self.handed = 0  # position at the last take()

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts = []
        self.handed = self.position
        return out


def stream_zip(
    folder: Path, members: List[Tuple[str, str]], chunk_size: int = EXPORT_CHUNK
) -> Iterator[bytes]:
    """The zip of ``members``, in pieces of about ``chunk_size`` bytes (a member is read a
    piece at a time: a client that reads slowly holds one piece, never a whole file)."""
    sink = _Chunks()
    # Stored, not deflated: photos do not compress, and the CPU is better spent elsewhere.
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as archive:  # type: ignore[call-overload]
        for label, filename in members:
            path = str(folder / label / filename)
            try:
                source = open(path, "rb")  # noqa: SIM115 - closed by the with below
                # Its size decides zip64 before the data is written (the sink cannot seek).
                info = zipfile.ZipInfo.from_file(path, "{}/{}".format(label, filename))
            except FileNotFoundError:
                continue  # moved or deleted while streaming
            info.compress_type = zipfile.ZIP_STORED
            with source, archive.open(info, "w") as member:
                while True:
                    block = source.read(chunk_size)
                    if not block:
                        break
                    member.write(block)
                    if sink.position - sink.handed >= chunk_size:
                        yield sink.take()
            chunk = sink.take()
            if chunk:
                yield chunk
    chunk = sink.take()
    if chunk:
        yield chunk
