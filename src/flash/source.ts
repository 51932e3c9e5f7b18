/**
 * Where a flash reads its image: a local file (raw, .gz, .xz, .zst) or an http(s) URL, always
 * handed to the writer as the decompressed bytes from the start, plus the block map found beside
 * it. Decompressors, measured on a 2 GiB image (340 MiB of data, the rest zeros) on a 2-core host:
 *  - zstd: the whole 2 GiB comes out of the decoder, zeros included, so moving it costs more than
 *    decoding it (`zstd -dc > /dev/null` 0.5 s, the same through a pipe into Node 1.0 s). In
 *    order of preference:
 *      1. Node's own zstd (node:zlib, Node >= 22.15): libzstd in this process on the I/O threads,
 *         no pipe: 0.36-0.47 s for the 2 GiB with 4 MiB output chunks (64 KiB chunks: 0.9 s);
 *      2. the `zstd` tool through a pipe, when on PATH (it is on every system that made a .zst):
 *         1.0-1.1 s, on Node 20;
 *      3. `fzstd` (pure JS, used for .debs): 16 s; a last resort, or with decoder: 'js'.
 *    A decoder in a worker thread was not taken: in JS or WebAssembly it decodes far slower than
 *    libzstd, and its output would still have to cross to the writer.
 *  - xz: the `xz` tool when present (multi-threaded on multi-block files), else `xz-decompress`;
 *    on the 90 MiB minimal image the tool took 0.6 s, xz-decompress 0.6-2.2 s (a loaded host).
 *  - gzip: Node's zlib, which runs on the thread pool, so it overlaps the writes anyway; with 4 MiB
 *    output chunks: 0.5-1.7 s for the 2 GiB against 7.8-10.8 s with zlib's default 16 KiB ones.
 * The decoders, and http(s), load only when a source needs them: a raw local image, the common
 * case at a bench, starts without them (about 50 ms less per flash).
 */
import { spawn, spawnSync } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import { basename } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { compressionOf, type Compression } from '../packages/compression.js';
import { EdgekitError } from '../util/errors.js';

export interface ImageSource {
  /** The file name (or the URL's last path segment). */
  name: string;
  /** Where it was opened from: a path or a URL. */
  location: string;
  compression: Compression;
  /** Decompressed size, when known before reading (a raw file, a raw download, or the bmap's). */
  size?: number;
  /** The decompressed image, from byte 0; each call reads the source again. */
  stream(): Readable;
  /** The block map found beside the image (or given), as text. */
  bmapText?: string;
  /** Where the block map came from. */
  bmapLocation?: string;
  /** An uncompressed local file: the flasher reads only the mapped ranges of it, in place. */
  path?: string;
}

export interface SourceOptions {
  /** A .bmap file or URL to use instead of the one beside the image. */
  bmap?: string;
  /** Ignore any .bmap beside the image (write every non-zero 4 KiB block). */
  noBmap?: boolean;
  /** Force the JS decoders even where a tool exists (tests compare both). */
  decoder?: 'auto' | 'js';
}

const isUrl = (s: string) => /^https?:\/\//i.test(s);

export async function openSource(pathOrUrl: string, opts: SourceOptions = {}): Promise<ImageSource> {
  return isUrl(pathOrUrl) ? openUrl(pathOrUrl, opts) : openFile(pathOrUrl, opts);
}

/** `<name>.bmap` for `<name>.img[.zst|.gz|.xz]`, then bmaptool's `<name>.img.bmap`. */
export function bmapCandidates(location: string): string[] {
  const plain = location.replace(/\.(zst|gz|xz)$/i, '');
  const out = [];
  if (/\.img$/i.test(plain)) out.push(plain.replace(/\.img$/i, '.bmap'));
  out.push(`${plain}.bmap`);
  return out;
}

async function openFile(path: string, opts: SourceOptions): Promise<ImageSource> {
  const info = await stat(path).catch((err: NodeJS.ErrnoException) => {
    throw new EdgekitError(`${path}: cannot open the image: ${err.code ?? err.message}`);
  });
  if (!info.isFile()) throw new EdgekitError(`${path}: not a regular file`);
  const compression = compressionOf(path);
  const bmap = await findBmap(path, opts, async (p) => readFile(p, 'utf8').catch(() => undefined));
  const decode = await decoderFor(compression, opts.decoder ?? 'auto');
  return {
    name: basename(path),
    location: path,
    compression,
    size: compression === 'none' ? info.size : bmapSize(bmap?.text),
    bmapText: bmap?.text,
    bmapLocation: bmap?.where,
    path: compression === 'none' ? path : undefined,
    stream: () => decode({ file: path }, path),
  };
}

async function openUrl(url: string, opts: SourceOptions): Promise<ImageSource> {
  const name = decodeURIComponent(new URL(url).pathname.split('/').pop() || 'image');
  const compression = compressionOf(name);
  const bmap = await findBmap(url, opts, async (u) => (isUrl(u) ? fetchText(u) : readFile(u, 'utf8').catch(() => undefined)));
  // The size of a raw download is its Content-Length: ask once, without fetching the body.
  const length = compression === 'none' ? await contentLength(url) : undefined;
  const decode = await decoderFor(compression, opts.decoder ?? 'auto');
  return {
    name,
    location: url,
    compression,
    size: length ?? bmapSize(bmap?.text),
    bmapText: bmap?.text,
    bmapLocation: bmap?.where,
    stream: () => decode({ stream: download(url) }, url),
  };
}

async function findBmap(
  location: string,
  opts: SourceOptions,
  read: (where: string) => Promise<string | undefined>,
): Promise<{ text: string; where: string } | undefined> {
  if (opts.noBmap) return undefined;
  if (opts.bmap) {
    const text = await read(opts.bmap);
    if (text === undefined) throw new EdgekitError(`${opts.bmap}: cannot read the block map`);
    return { text, where: opts.bmap };
  }
  for (const where of bmapCandidates(location)) {
    const text = await read(where);
    if (text !== undefined) return { text, where };
  }
  return undefined;
}

function bmapSize(text: string | undefined): number | undefined {
  const m = text && /<ImageSize>\s*(\d+)\s*<\/ImageSize>/.exec(text);
  return m ? Number(m[1]) : undefined;
}

// ---- decompressing -----------------------------------------------------------------------------

type DecodeInput = { file: string } | { stream: Readable };
/** The decompressed bytes of a file or a stream; an error of the input errors the output. */
type Decode = (input: DecodeInput, where: string) => Readable;

/** Node's own zstd decoder (node:zlib since Node 22.15 and 23.8); undefined on older Node. */
type ZstdFactory = (opts: { chunkSize: number }) => import('node:stream').Transform;

/** Picks the decoder once per source (see the measurements at the top); loads only what it uses. */
async function decoderFor(c: Compression, mode: 'auto' | 'js'): Promise<Decode> {
  const read = (input: DecodeInput) => ('file' in input ? createReadStream(input.file, { highWaterMark: 1 << 20 }) : input.stream);
  if (c === 'none') return read;
  // Large output chunks: most of an image is zeros, and each chunk is one trip to the writer.
  const chunkSize = 4 << 20;
  if (c === 'gz') {
    const { createGunzip } = await import('node:zlib');
    return (input) => piped(read(input), createGunzip({ chunkSize }));
  }
  if (mode === 'auto' && c === 'zst') {
    const zlib = (await import('node:zlib')) as unknown as { createZstdDecompress?: ZstdFactory };
    const native = zlib.createZstdDecompress;
    if (native) return (input) => piped(read(input), native({ chunkSize }));
  }
  const tool = mode === 'auto' ? toolFor(c) : undefined;
  if (tool) return (input, where) => ('file' in input ? toolStream(tool, [input.file], undefined, where) : toolStream(tool, [], input.stream, where));
  const { decompressStream } = await import('../packages/decompress.js');
  return (input) => {
    const source = read(input);
    const out = decompressStream(source, c);
    if (out !== source) source.on('error', (e: Error) => out.destroy(e));
    return out;
  };
}

/** `input` through `transform`, with an error of either ending the output. */
function piped(input: Readable, transform: import('node:stream').Transform): Readable {
  input.on('error', (e) => transform.destroy(e));
  transform.on('close', () => input.destroy());
  return input.pipe(transform);
}

const toolCache = new Map<string, boolean>();
function hasTool(cmd: string): boolean {
  let ok = toolCache.get(cmd);
  if (ok === undefined) {
    ok = spawnSync(cmd, ['--version'], { stdio: 'ignore' }).status === 0;
    toolCache.set(cmd, ok);
  }
  return ok;
}

function toolFor(c: Compression): { cmd: string; args: string[] } | undefined {
  if (c === 'zst' && hasTool('zstd')) return { cmd: 'zstd', args: ['-d', '-c', '-q'] };
  if (c === 'xz' && hasTool('xz')) return { cmd: 'xz', args: ['-d', '-c', '-q', '-T0'] };
  return undefined;
}

/** The tool's stdout; a failure of the tool (corrupt or truncated input) errors the stream. */
function toolStream(tool: { cmd: string; args: string[] }, files: string[], input: Readable | undefined, where: string): Readable {
  const child = spawn(tool.cmd, [...tool.args, ...files], { stdio: [input ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
  const out = new PassThrough({ highWaterMark: 4 << 20 });
  let err = '';
  let inputError: Error | undefined;
  child.stderr!.on('data', (d) => (err += d));
  if (input) {
    input.on('error', (e) => {
      inputError = e;
      child.kill();
    });
    input.pipe(child.stdin!);
    child.stdin!.on('error', () => {}); // EPIPE when the tool gives up first: its exit status says why
  }
  child.stdout!.pipe(out, { end: false });
  child.on('error', (e) => out.destroy(new EdgekitError(`${where}: cannot run ${tool.cmd}: ${e.message}`)));
  child.on('close', (code, signal) => {
    if (inputError) out.destroy(inputError);
    else if (code === 0) out.end();
    else {
      const why = err.trim().split('\n').pop() || `exit ${code ?? signal}`;
      out.destroy(new EdgekitError(`${where}: cannot decompress: ${why.replace(/^\S+:\s*/, '')}`));
    }
  });
  // Stopping early (a refused signature) must not leave the tool or the download running.
  out.on('close', () => {
    if (child.exitCode === null) child.kill();
    input?.destroy();
  });
  return out;
}

// ---- http(s) -----------------------------------------------------------------------------------

async function request(url: string, method: 'GET' | 'HEAD', redirects = 5): Promise<IncomingMessage> {
  const { get } = url.startsWith('https:') ? await import('node:https') : await import('node:http');
  return new Promise((resolve, reject) => {
    const req = get(url, { method }, (res) => {
      const status = res.statusCode ?? 0;
      if (status >= 300 && status < 400 && res.headers.location && redirects > 0) {
        res.resume();
        resolve(request(new URL(res.headers.location, url).toString(), method, redirects - 1));
        return;
      }
      resolve(res);
    });
    req.on('error', (e: NodeJS.ErrnoException) => reject(new EdgekitError(`cannot reach ${url}: ${e.code ?? e.message}`)));
  });
}

async function fetchText(url: string): Promise<string | undefined> {
  const res = await request(url, 'GET').catch(() => undefined);
  if (!res) return undefined;
  if (res.statusCode !== 200) {
    res.resume();
    return undefined;
  }
  const chunks: Buffer[] = [];
  try {
    for await (const c of res) chunks.push(c as Buffer);
  } catch {
    return undefined;
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function contentLength(url: string): Promise<number | undefined> {
  const res = await request(url, 'HEAD');
  res.resume();
  if (res.statusCode !== 200) throw new EdgekitError(`${url}: HTTP ${res.statusCode} ${res.statusMessage ?? ''}`.trim());
  const n = Number(res.headers['content-length']);
  return Number.isSafeInteger(n) && n > 0 ? n : undefined;
}

/**
 * The body of `url` as a stream that errors (never just ends) when the connection drops before
 * Content-Length bytes arrived: a short image must not look like a complete one.
 */
export function download(url: string): Readable {
  const out = new PassThrough({ highWaterMark: 4 << 20 });
  request(url, 'GET').then(
    (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        out.destroy(new EdgekitError(`${url}: HTTP ${res.statusCode} ${res.statusMessage ?? ''}`.trim()));
        return;
      }
      const expected = Number(res.headers['content-length']);
      let got = 0;
      const short = () =>
        new EdgekitError(
          `${url}: download ended early: ${got} of ${Number.isFinite(expected) ? expected : 'unknown'} bytes (connection closed)`,
        );
      res.on('data', (c: Buffer) => {
        got += c.length;
        if (!out.write(c)) res.pause();
      });
      out.on('drain', () => res.resume());
      res.on('aborted', () => out.destroy(short()));
      res.on('error', () => out.destroy(short()));
      res.on('end', () => {
        if (Number.isFinite(expected) && got !== expected) out.destroy(short());
        else out.end();
      });
      out.on('close', () => res.destroy());
    },
    (err) => out.destroy(err),
  );
  return out;
}
