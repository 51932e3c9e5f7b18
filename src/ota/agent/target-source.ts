/**
 * Where the agent reads release files from: the release server over HTTP with byte ranges (so a
 * download resumes where it stopped), or a repository folder (`edgekit update --from <dir>`).
 * Bytes from here are not trusted: the caller checks them against the signed length and sha256.
 */
import { createReadStream } from 'node:fs';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { TargetInfo } from '../repo/index.js';
import { EdgekitError } from '../../util/errors.js';

export interface TargetSource {
  /** For messages: the server URL or folder. */
  readonly where: string;
  /** The target's bytes from `start` to its end. Abort with `signal` (a stalled link). */
  openFrom(target: TargetInfo, start: number, signal: AbortSignal): Promise<Readable>;
}

/** A transfer failure worth retrying (dropped link, stall, server error); anything else is final. */
export class TransientError extends Error {}

/**
 * The consistent-snapshot file name of a target, as the repository stores it:
 * targets/<dir>/<sha256>.<file> (docs/releases.md, "Layout").
 */
export function targetFilePath(target: TargetInfo): string {
  const slash = target.path.lastIndexOf('/');
  return `targets/${target.path.slice(0, slash + 1)}${target.sha256}.${target.path.slice(slash + 1)}`;
}

export function httpTargetSource(server: string): TargetSource {
  return httpTargetsSource({ targetsUrl: new URL('targets/', server.replace(/\/*$/, '/')).href, where: server });
}

export interface HttpTargetsOptions {
  /** The URL of the repository's targets/ folder (on the release server, or a static host or CDN). */
  targetsUrl: string;
  /** For messages; default the targets URL. */
  where?: string;
  /** Extra request headers (a fleet server's device token); `renew` after a 401. */
  headers?: (url: string, renew: boolean) => Promise<Record<string, string>>;
}

export function httpTargetsSource(o: HttpTargetsOptions): TargetSource {
  const base = o.targetsUrl.replace(/\/*$/, '/');
  let renew = false;
  return {
    where: o.where ?? o.targetsUrl,
    async openFrom(target, start, signal) {
      const url = new URL(targetFilePath(target).slice('targets/'.length), base);
      const extra = o.headers ? await o.headers(url.href, renew) : {};
      renew = false;
      const res = await get(url, { ...extra, ...(start > 0 ? { range: `bytes=${start}-` } : {}) }, signal);
      if (res.statusCode === 206 || (res.statusCode === 200 && start === 0)) return res;
      if (res.statusCode === 200) {
        // A server without range support sends it all: skip what is already here.
        return skipBytes(res, start);
      }
      res.resume();
      const status = res.statusCode ?? 0;
      const msg = `${url.href}: HTTP ${status}`;
      // A token that expired during a long download: the next attempt asks for a fresh one.
      if (status === 401 && o.headers) {
        renew = true;
        throw new TransientError(msg);
      }
      if (status >= 500 || status === 408 || status === 429) throw new TransientError(msg);
      throw new EdgekitError(msg);
    },
  };
}

export function dirTargetSource(dir: string): TargetSource {
  return {
    where: dir,
    async openFrom(target, start) {
      const file = join(dir, targetFilePath(target));
      const stream = createReadStream(file, { start });
      await new Promise<void>((resolve, reject) => {
        stream.once('open', () => resolve());
        stream.once('error', (err) => reject(new EdgekitError(`${file}: cannot read: ${(err as NodeJS.ErrnoException).code ?? err.message}`)));
      });
      return stream;
    },
  };
}

function get(url: URL, headers: Record<string, string>, signal: AbortSignal): Promise<IncomingMessage> {
  const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request(url, { headers: { 'user-agent': 'edgekit-agent', ...headers }, signal }, resolve);
    req.on('error', (err) => reject(new TransientError(`${url.href}: ${(err as NodeJS.ErrnoException).code ?? err.message}`)));
    req.end();
  });
}

async function* skipping(res: IncomingMessage, skip: number): AsyncGenerator<Buffer> {
  let left = skip;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    if (left >= chunk.length) {
      left -= chunk.length;
      continue;
    }
    yield left ? chunk.subarray(left) : chunk;
    left = 0;
  }
}

function skipBytes(res: IncomingMessage, skip: number): Readable {
  // Readable.from keeps backpressure; closing it hangs up on the server.
  const out = Readable.from(skipping(res, skip), { objectMode: false });
  out.once('close', () => res.destroy());
  return out;
}
