/**
 * Fixtures for the flasher's tests: compressed copies of an image made with the real tools, a
 * local HTTP server (that can cut a download short), loop devices, and a FUSE file that fails
 * writes at a chosen byte (test/helpers/flash-eio-fuse.py, on Debian's python3-fusepy).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, createReadStream, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sh } from './image-bytes.js';

export const isRoot = process.getuid?.() === 0;

/** `<dir>/<name>.img` and `<dir>/<name>.bmap` copied from a built image, plus .gz/.xz/.zst made by gzip, xz and zstd. */
export function imageVariants(image: string, bmap: string, dir: string) {
  mkdirSync(dir, { recursive: true });
  const img = join(dir, basename(image));
  if (!existsSync(img)) {
    copyFileSync(image, img);
    copyFileSync(bmap, join(dir, basename(bmap)));
    sh('sh', ['-c', 'gzip -k -1 "$1" && xz -k -T0 -1 "$1" && zstd -q -k -3 "$1"', 'sh', img]);
  }
  return { raw: img, gz: `${img}.gz`, xz: `${img}.xz`, zst: `${img}.zst`, bmap: join(dir, basename(bmap)) };
}

/** The bmap's ranges as byte offsets, read with a regular expression (not our parser). */
export function bmapRanges(bmapPath: string): Array<{ first: number; last: number; start: number; end: number }> {
  const text = readFileSync(bmapPath, 'utf8');
  return [...text.matchAll(/<Range chksum="[0-9a-f]+">\s*(\d+)(?:-(\d+))?\s*<\/Range>/g)].map((m) => {
    const first = Number(m[1]);
    const last = Number(m[2] ?? m[1]);
    return { first, last, start: first * 4096, end: (last + 1) * 4096 };
  });
}

export interface FileServer {
  url(name: string): string;
  close(): Promise<void>;
}

/**
 * Serves the files of `dir` with Content-Length. `cutAfter` makes it send only that many bytes
 * of a body (still announcing the full length) and then drop the connection.
 */
export async function serveFolder(dir: string, opts: { cutAfter?: number } = {}): Promise<FileServer> {
  const server: Server = createServer((req, res) => {
    const path = join(dir, decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname).replace(/^\/+/, ''));
    if (!existsSync(path) || !statSync(path).isFile()) {
      res.writeHead(404).end();
      return;
    }
    const size = statSync(path).size;
    res.writeHead(200, { 'Content-Length': size, 'Content-Type': 'application/octet-stream' });
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    const cut = opts.cutAfter !== undefined && opts.cutAfter < size && !path.endsWith('.bmap');
    const stream = createReadStream(path, cut ? { end: opts.cutAfter! - 1 } : {});
    stream.pipe(res, { end: !cut });
    if (cut) stream.on('end', () => res.socket?.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: (name) => `http://127.0.0.1:${port}/${encodeURIComponent(name)}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A loop device over a new sparse file of `size` bytes (root only); detach() removes it. */
export function loopDevice(backing: string, size: number, opts: { readOnly?: boolean } = {}) {
  sh('truncate', ['-s', String(size), backing]);
  const dev = sh('losetup', ['--find', '--show', ...(opts.readOnly ? ['-r'] : []), backing]).trim();
  return {
    dev,
    detach: () => {
      spawnSync('losetup', ['-d', dev]);
    },
  };
}

const FUSE_SCRIPT = fileURLToPath(new URL('./flash-eio-fuse.py', import.meta.url));

export function hasFusepy(): boolean {
  const r = spawnSync('/usr/bin/python3', ['-c', 'try:\n import fusepy\nexcept ImportError:\n import fuse'], { stdio: 'ignore' });
  return r.status === 0 && existsSync('/dev/fuse');
}

/** Mounts the failing disk: `<mountpoint>/disk.img`, `size` bytes, EIO on any write touching `failAt`. */
export async function failingDisk(mountpoint: string, backing: string, size: number, failAt: number) {
  mkdirSync(mountpoint, { recursive: true });
  const child: ChildProcess = spawn('/usr/bin/python3', [FUSE_SCRIPT, mountpoint, backing, String(size), String(failAt)], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  const file = join(mountpoint, 'disk.img');
  for (let i = 0; i < 100 && !existsSync(file); i++) {
    if (child.exitCode !== null) throw new Error(`FUSE helper exited: ${err}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  if (!existsSync(file)) throw new Error(`FUSE helper did not mount ${mountpoint}: ${err}`);
  return {
    file,
    unmount: async () => {
      spawnSync('fusermount', ['-u', mountpoint]);
      if (child.exitCode === null) {
        await new Promise((r) => {
          child.once('exit', r);
          setTimeout(() => child.kill(), 2000);
        });
      }
    },
  };
}
