/**
 * Fetching repository files for the device: over HTTP(S) with tuf-js's own fetcher, or from a
 * local folder (file: URLs, for simulators and offline media). Target files can be streamed
 * straight into a slot with their length capped and their hash checked.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { Readable, Transform } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { BaseFetcher } from 'tuf-js';
import { DownloadHTTPError } from 'tuf-js/dist/error.js';
import { EdgekitError } from '../../util/errors.js';

/** Serves file: URLs from disk; a missing file is a 404 so tuf-js ends its root walk there. */
export class DirFetcher extends BaseFetcher {
  async fetch(url: string): Promise<ReadableStream<Uint8Array<ArrayBuffer>>> {
    const path = fileURLToPath(url);
    const stream = createReadStream(path);
    await new Promise<void>((resolve, reject) => {
      stream.once('open', () => resolve());
      stream.once('error', (err: NodeJS.ErrnoException) => reject(err.code === 'ENOENT' ? new DownloadHTTPError(`${path}: not found`, 404) : err));
    });
    return Readable.toWeb(stream) as unknown as ReadableStream<Uint8Array<ArrayBuffer>>;
  }
}

/**
 * Extra headers for a request to `url`; `renew` is true when the server refused the last ones
 * (401: an expired token), so fresh ones are wanted.
 */
export type RequestHeaders = (url: string, renew: boolean) => Promise<Record<string, string>>;

/**
 * tuf-js's fetcher with extra request headers (a fleet server's device token). Like tuf-js's own,
 * it uses the global fetch (the device bundle's is lean-fetch over node:http), retries network
 * errors and 5xx answers, and reports other HTTP errors as DownloadHTTPError (a 404 ends tuf-js's
 * walk through root versions). A 401 is asked again once with renewed headers.
 */
export class HeaderFetcher extends BaseFetcher {
  constructor(
    private readonly headers: RequestHeaders,
    private readonly o: { userAgent: string; timeoutMs: number; retries: number },
  ) {
    super();
  }

  async fetch(url: string): Promise<ReadableStream<Uint8Array<ArrayBuffer>>> {
    let renew = false;
    for (let attempt = 0; ; attempt++) {
      let res: Response;
      try {
        res = await fetch(url, { headers: { 'user-agent': this.o.userAgent, ...(await this.headers(url, renew)) }, signal: AbortSignal.timeout(this.o.timeoutMs) });
      } catch (err) {
        if (attempt < this.o.retries) continue;
        throw err;
      }
      if (res.ok && res.body) return res.body as ReadableStream<Uint8Array<ArrayBuffer>>;
      await res.body?.cancel().catch(() => {});
      if (res.status === 401 && !renew) {
        renew = true;
        continue;
      }
      if (res.status >= 500 && attempt < this.o.retries) continue;
      throw new DownloadHTTPError(`${url}: HTTP ${res.status}`, res.status);
    }
  }
}

/**
 * A stream of `body` that fails as soon as more than `length` bytes arrive, and at the end unless
 * exactly `length` bytes with the given sha256 came. A consumer must treat the data as untrusted
 * until the stream ends without an error.
 */
export function verifiedStream(body: ReadableStream<Uint8Array>, length: number, sha256: string, what: string): Readable {
  const hash = createHash('sha256');
  let seen = 0;
  const source = Readable.fromWeb(body as import('node:stream/web').ReadableStream<Uint8Array>);
  const check = new Transform({
    transform(chunk: Buffer, _enc, done) {
      seen += chunk.length;
      if (seen > length) {
        source.destroy();
        done(new EdgekitError(`${what}: refused: the server sent more than the ${length} bytes the metadata allows`));
        return;
      }
      hash.update(chunk);
      done(null, chunk);
    },
    flush(done) {
      if (seen !== length) return done(new EdgekitError(`${what}: refused: got ${seen} bytes, the metadata says ${length}`));
      const got = hash.digest('hex');
      if (got !== sha256) return done(new EdgekitError(`${what}: refused: sha256 ${got.slice(0, 16)} does not match the signed ${sha256.slice(0, 16)}`));
      done();
    },
  });
  source.on('error', (err) => check.destroy(err));
  return source.pipe(check);
}
