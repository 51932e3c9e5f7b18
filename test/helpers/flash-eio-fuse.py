#!/usr/bin/python3
"""A FUSE filesystem with one file, disk.img, that fails writes touching byte FAIL_AT with EIO:
a card that dies mid-flash, for the flasher's tests. Data lives in a backing file.
Usage: flash-eio-fuse.py MOUNTPOINT BACKING SIZE FAIL_AT   (stays in the foreground; unmount to stop)
Needs Debian's python3-fusepy (module 'fusepy') or fusepy from PyPI (module 'fuse')."""
import errno
import os
import stat
import sys

try:
    from fusepy import FUSE, FuseOSError, Operations
except ImportError:
    from fuse import FUSE, FuseOSError, Operations

NAME = '/disk.img'


class FailingDisk(Operations):
    def __init__(self, backing, size, fail_at):
        self.fd = os.open(backing, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(self.fd, size)
        self.size = size
        self.fail_at = fail_at

    def getattr(self, path, fh=None):
        if path == '/':
            return {'st_mode': stat.S_IFDIR | 0o755, 'st_nlink': 2}
        if path != NAME:
            raise FuseOSError(errno.ENOENT)
        return {'st_mode': stat.S_IFREG | 0o644, 'st_nlink': 1, 'st_size': self.size}

    def readdir(self, path, fh):
        return ['.', '..', NAME[1:]]

    def open(self, path, flags):
        if path != NAME:
            raise FuseOSError(errno.ENOENT)
        return 0

    def truncate(self, path, length, fh=None):
        # The flasher empties a file target and sizes it to the image: keep the disk's size.
        return 0

    def read(self, path, size, offset, fh):
        return os.pread(self.fd, size, offset)

    def write(self, path, data, offset, fh):
        if offset <= self.fail_at < offset + len(data):
            raise FuseOSError(errno.EIO)
        return os.pwrite(self.fd, data, offset)

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        return 0


if __name__ == '__main__':
    mountpoint, backing, size, fail_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    FUSE(FailingDisk(backing, size, fail_at), mountpoint, foreground=True, nothreads=True)
