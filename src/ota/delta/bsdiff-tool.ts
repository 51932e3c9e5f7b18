/**
 * Publisher side: a per-file binary diff made by the `bsdiff` tool (Debian package bsdiff), read
 * back into our own operations. bsdiff's suffix sorting finds the approximate matches that make
 * executables diff well (code moved by a few bytes changes every address in it: the differences
 * are small numbers, which compress to almost nothing). Its patch format (BSDIFF40: three bzip2
 * streams) is decoded here with the `bzip2` tool, so the device never needs bzip2.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EdgekitError } from '../../util/errors.js';

/** Bytes [at, at+len) of the new file: old[oldAt..] plus `diff` bytes, or `literal` bytes. */
export type DiffOp =
  | { kind: 'add'; at: number; len: number; oldAt: number; diff: Buffer }
  | { kind: 'literal'; at: number; len: number; data: Buffer };

/** bsdiff's signed 64-bit numbers: magnitude little-endian, sign in the top bit. */
function offtin(b: Buffer, at: number): number {
  const hi = b.readUInt32LE(at + 4);
  const v = (hi & 0x7fffffff) * 2 ** 32 + b.readUInt32LE(at);
  return hi & 0x80000000 ? -v : v;
}

function bunzip2(data: Buffer): Buffer {
  const r = spawnSync('bzip2', ['-dc'], { input: data, maxBuffer: 1 << 30 });
  if (r.error) throw new EdgekitError(`bzip2: ${r.error.message} (install the bzip2 package to make deltas)`);
  if (r.status !== 0) throw new EdgekitError(`bzip2: cannot decode a bsdiff stream: ${r.stderr.toString().trim()}`);
  return r.stdout;
}

/** Parses a BSDIFF40 patch into operations covering the new file in order. */
export function parseBsdiff(patch: Buffer, oldSize: number): DiffOp[] {
  if (patch.length < 32 || patch.toString('latin1', 0, 8) !== 'BSDIFF40') throw new EdgekitError('bsdiff: output is not a BSDIFF40 patch');
  const ctrlLen = offtin(patch, 8);
  const diffLen = offtin(patch, 16);
  const newSize = offtin(patch, 24);
  const ctrl = bunzip2(patch.subarray(32, 32 + ctrlLen));
  const diff = bunzip2(patch.subarray(32 + ctrlLen, 32 + ctrlLen + diffLen));
  const extra = bunzip2(patch.subarray(32 + ctrlLen + diffLen));
  const ops: DiffOp[] = [];
  let at = 0, oldAt = 0, d = 0, e = 0;
  for (let c = 0; c + 24 <= ctrl.length; c += 24) {
    const addLen = offtin(ctrl, c), extraLen = offtin(ctrl, c + 8), seek = offtin(ctrl, c + 16);
    if (addLen < 0 || extraLen < 0 || oldAt < 0 || oldAt + addLen > oldSize) throw new EdgekitError('bsdiff: control entry out of range');
    if (addLen > 0) ops.push({ kind: 'add', at, len: addLen, oldAt, diff: diff.subarray(d, d + addLen) });
    at += addLen; d += addLen; oldAt += addLen;
    if (extraLen > 0) ops.push({ kind: 'literal', at, len: extraLen, data: extra.subarray(e, e + extraLen) });
    at += extraLen; e += extraLen; oldAt += seek;
  }
  if (at !== newSize) throw new EdgekitError(`bsdiff: patch covers ${at} of ${newSize} bytes`);
  return ops;
}

/** Diffs two in-memory files with the bsdiff tool. */
export async function bsdiff(oldData: Buffer, newData: Buffer): Promise<DiffOp[]> {
  const dir = await mkdtemp(join(tmpdir(), 'edgekit-bsdiff-'));
  try {
    await writeFile(join(dir, 'old'), oldData);
    await writeFile(join(dir, 'new'), newData);
    const r = spawnSync('bsdiff', [join(dir, 'old'), join(dir, 'new'), join(dir, 'patch')], { stdio: ['ignore', 'ignore', 'pipe'] });
    if (r.error) throw new EdgekitError(`bsdiff: ${r.error.message} (install the bsdiff package to make deltas)`);
    if (r.status !== 0) throw new EdgekitError(`bsdiff failed: ${r.stderr.toString().trim()}`);
    return parseBsdiff(await readFile(join(dir, 'patch')), oldData.length);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
